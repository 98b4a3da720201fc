"""Why the classifier decides: CAM methods, guided backprop, SHAP and their measured faithfulness."""
