"""Models by kind (``registry``), the checkpoint format (``checkpoint``), and the slice CNN
(``slice_cnn``: any timm backbone with six logits)."""
