"""Complexity accounting: parameters, MACs, elementwise ops and memory traffic, per op and per module.

>>> import excite
>>> p = excite.profile(excite.create_model("resnet50"), input_size=(3, 224, 224))
>>> p.params, p.macs
(25557032, 4089184256)

Mechanism (``counter``: aten ops intercepted on meta tensors), formulas (``formulas``: pure functions
of shapes) and policy (``conventions``: which terms and units a paper used) are kept apart, as in
fvcore.
"""

from excite.core.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "Profile": ".accounting", "profile": ".accounting", "CONVENTIONS": ".conventions",
    "Convention": ".conventions", "get_convention": ".conventions",
})
