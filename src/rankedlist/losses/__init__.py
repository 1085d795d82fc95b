"""Losses: the Ranked List Loss (as a module and as a function), and its cross-batch memory."""

from rankedlist.losses._workspace import release_workspace
from rankedlist.losses.memory_bank import MemoryBank
from rankedlist.losses.memory_ranked_list_loss import MemoryRankedListLoss
from rankedlist.losses.pml_cross_batch_memory import PMLCrossBatchMemory
from rankedlist.losses.ranked_list_loss import RankedListLoss, ranked_list_loss

__all__ = [
    "MemoryBank",
    "MemoryRankedListLoss",
    "PMLCrossBatchMemory",
    "RankedListLoss",
    "ranked_list_loss",
    "release_workspace",
]
