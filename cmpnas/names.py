"""Names the command line shows without importing torch (checked against the registries by the tests)."""

PRESETS = ("resnet-gallery", "resnet-gallery-large", "resnet-tiny", "mbv3-large", "mbv3-small", "mbv3-tiny")
DEFAULT_GALLERY = "resnet-gallery"
DEFAULT_QUERY = "mbv3-small"
LOSS_PRESETS = ("independent", "bct", "l2", "contrastive", "bct-l2", "bct-contrastive")
DEFAULT_COMPAT = "bct-l2"
