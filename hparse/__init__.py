"""hparse: instance-level human parsing, four published methods reproduced and taught.

Subpackages: ``hparse.data`` (datasets, label sets, transforms), ``hparse.models`` (``build_model``),
``hparse.ops`` (Instance CRF, matching), ``hparse.metrics`` (``ParsingEvaluator``), ``hparse.engine``
(profiles, results with provenance, training), ``hparse.viz`` (overlays and widgets).
"""

__version__ = "0.1.0"
