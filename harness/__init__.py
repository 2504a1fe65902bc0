"""ttt-harness: scaling studies of test-time training (Hübotter et al., ICLR 2026).

Components live in subpackages (data, features, retrieval, models, ttt, eval, results,
distributed); `studies/` holds one short recipe per study.
"""

__version__ = "0.1.0"
