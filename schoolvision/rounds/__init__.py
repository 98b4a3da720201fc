"""A review round: a mapper's decisions become chips where a person looked, and a fine-tuned run.

It sits above :mod:`schoolvision.review` (the queue, the page and the decisions it reads) and the stages it
drives (:mod:`schoolvision.data` cuts the chips, :mod:`schoolvision.train` fine-tunes), so that ``review``
itself never runs a scan nor cuts chips. ``schoolvision review retrain`` is its command.
"""
