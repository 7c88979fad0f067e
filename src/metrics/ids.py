"""Checks shared by the metrics."""
from src.errors import UserError


def check_same_ids(kind, predictions, truth, truth_name, unit):
    """UserError unless `predictions` and `truth` (dicts) cover exactly the same ids."""
    missing = [key for key in truth if key not in predictions]
    extra = [key for key in predictions if key not in truth]
    if missing or extra:
        raise UserError(f"{kind}: predictions and {truth_name} cover different ids ({len(missing)} without a "
                        f"prediction, e.g. {missing[:3]}; {len(extra)} without {truth_name}, e.g. {extra[:3]}); "
                        f"predict every {unit} of the evaluation set")
