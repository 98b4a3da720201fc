"""Review and retrain: a ranked queue of what a mapper should look at, and the mapper's decisions as labels.

``schoolvision review build`` (:mod:`~schoolvision.review.queue`) writes the queue and its offline
page (:mod:`~schoolvision.review.page`); ``review import`` (:mod:`~schoolvision.review.decisions`)
reads the decisions back; ``review retrain`` (:mod:`~schoolvision.rounds.retrain`) turns them into chips where a
person looked and fine-tunes the run.
"""
