"""Evaluation: mIoU, AP^p, PCP and AP^r with the official evaluation scripts' semantics."""
