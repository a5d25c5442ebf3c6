"""Evaluation: ranking metrics, full-catalogue evaluation, baselines, exposure."""
