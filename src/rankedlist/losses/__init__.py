"""Losses: the Ranked List Loss, as a module and as a function."""

from rankedlist.losses._kernels import release_workspace
from rankedlist.losses.ranked_list_loss import RankedListLoss, ranked_list_loss

__all__ = ["RankedListLoss", "ranked_list_loss", "release_workspace"]
