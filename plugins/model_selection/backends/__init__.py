"""The two backends behind one SageMaker-shaped client: `local` (this machine) and `sagemaker`.

Callers never use them directly: `model_selection.hooks.tuning_job_hook` gives the hook
whose client is either one.
"""
