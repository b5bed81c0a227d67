"""Self-supervised losses, one module per pretext (lightly's layout); this file only re-exports."""

from training.losses.barlow_twins import BarlowTwinsLoss
from training.losses.byol import BYOLLoss
from training.losses.clustering import DINOLoss
from training.losses.ntxent import NTXentLoss
from training.losses.vicreg import VICRegLoss

__all__ = ["BarlowTwinsLoss", "BYOLLoss", "DINOLoss", "NTXentLoss", "VICRegLoss"]
