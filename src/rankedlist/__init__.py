"""rankedlist: the Ranked List Loss for deep metric learning, and the pipeline around it.

Subpackages follow the data flow, one way:
``data -> models -> losses -> training -> evaluation -> report``; ``cli`` drives them.
"""

from rankedlist.losses import RankedListLoss, ranked_list_loss

__version__ = "0.1.0"
__all__ = ["RankedListLoss", "ranked_list_loss", "__version__"]
