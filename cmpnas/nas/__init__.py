"""CMP-NAS: the elastic supernet's search space, its elastic layers, the supernet, its training (a step of the one
trainer), the cost models and the search.

* :mod:`.space` — :class:`SupernetConfig`, the arch encoding, static specs and analytic MACs.
* :mod:`.elastic` — elastic layers that share weights by slicing.
* :mod:`.supernet` — :class:`ElasticMobileNetV3`, subnet extraction, BatchNorm recalibration, files.
* :mod:`.train` — the sandwich-rule step (progressive shrinking) and :func:`train_supernet`.
* :mod:`.cost` — :class:`MacsCost` and :class:`LatencyTable`.
* :mod:`.search` — evolutionary and random search, finetuning of the winners.
* :mod:`.cli` — ``hetsearch nas``.
"""

from .cost import CostModel, LatencyTable, MacsCost, layer_key
from .space import (SupernetConfig, arch_key, arch_layers, arch_macs, arch_to_spec, canonical_arch, largest_arch,
                    random_arch, random_genome, smallest_arch, spec_layers)
from .supernet import ElasticMobileNetV3, load_supernet, recalibrate_bn, save_supernet

__all__ = ["CostModel", "LatencyTable", "MacsCost", "layer_key", "SupernetConfig", "arch_key", "arch_layers",
           "arch_macs", "arch_to_spec", "canonical_arch", "largest_arch", "random_arch", "random_genome",
           "smallest_arch", "spec_layers", "ElasticMobileNetV3", "load_supernet", "recalibrate_bn", "save_supernet"]
