"""The image cache as the driver sees it: shared pulls, the pre-pull, the cache's budget.

``pulls`` (one ``tart pull`` per image, shared by every task that needs it), ``prepull``,
``cache`` (the cache as node attributes, pruning to the budget). How Tart stores and pulls
an image is ``_tart.images``.
"""
