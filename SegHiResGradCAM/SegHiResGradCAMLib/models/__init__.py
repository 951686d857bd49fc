"""Model cards and formats: the card type, a reader per format (card JSON, MONAI bundle, nnU-Net folder).

May import ``..cam`` (tilings, ensembles) and ``..volumes`` (a card's preparation); reading a card loads no torch.
"""
