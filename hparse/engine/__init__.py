"""Engine: run profiles, results with provenance, and (with the models) training and evaluation loops."""

from .profiles import PROFILES, Profile, get_device, get_profile, seed_everything
from .results import find_results, load_result, provenance, write_result
from .trainer import evaluate, train
