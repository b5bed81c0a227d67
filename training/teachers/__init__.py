"""Teachers: pretrained taggers that label real music for distillation (training only).

Never imported by ``rt_tagger``. Each teacher implements :class:`training.teachers.base.Teacher`;
``python -m training.teachers label …`` runs them over files.
"""
