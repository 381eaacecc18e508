"""Spatial Transformer (Jaderberg et al., Spatial Transformer Networks, NeurIPS 2015).

A spatial transformer has three parts (paper Sec. 3, Fig. 2):

* a *localisation network* that regresses the 6 parameters ``theta`` of a 2D affine transform from
  the feature map it sees;
* a *grid generator* mapping every output pixel to a source location (``F.affine_grid``);
* a *sampler* reading the input there with bilinear interpolation (``F.grid_sample``, paper Eq. 5).

The regression layer starts at the identity transform (zero weight, bias ``[1, 0, 0, 0, 1, 0]``, the
paper's and every reimplementation's initialisation), so a freshly attached transformer changes
nothing and training moves it away from the identity only where that lowers the loss.

:func:`with_stn` puts one in front of any model (``where="input"``) or after any of its submodules
(``where="layer1"``: the paper's Sec. 4.3 places transformers after convolutional layers too). The
model's own parameter names are untouched; the transformer's are added under ``stn`` (input) or
``stn_<where>`` (after a submodule).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from excite.core.errors import ExciteError, check_range

__all__ = ["SpatialTransformer", "LocalisationNet", "with_stn", "stn_of", "resolve_stn_option", "loc_pool_size"]

IDENTITY_THETA = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # row-major 2x3 identity, the regression layer's bias


class LocalisationNet(nn.Module):
    """The localisation network of the paper's ST-CNN on distorted MNIST (Appendix A, as we read it):
    two 5x5 convolutions of 20 filters, each followed by 2x2 max-pooling and ReLU, then a fully connected
    layer of ``hidden`` (50) units. An adaptive pooling to ``pool x pool`` before the fully connected layer
    lets the same network read inputs and feature maps of any size (the paper fixes the size instead);
    it keeps a coarse map, not a global average, because where the object lies is what it must find.
    """

    def __init__(self, in_channels: int, *, width: int = 20, hidden: int = 50, pool: int = 4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(pool),
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(width * pool * pool, hidden), nn.ReLU(inplace=True))
        self.out_features = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def loc_pool_size(input_size) -> int:
    """The pooled grid side for maps of ``input_size``: the side after the localisation network's two
    2x2 max-pools, or its largest divisor up to 8. A divisor keeps the adaptive pooling a plain
    average pooling, which ONNX can express (an uneven adaptive pooling it cannot)."""
    side = min(input_size) if isinstance(input_size, (tuple, list)) else int(input_size)
    side = max(1, side // 4)
    return max(d for d in range(1, min(side, 8) + 1) if side % d == 0)


class SpatialTransformer(nn.Module):
    """Affine spatial transformer for ``channels``-channel inputs; output shape = input shape.

    Args:
        channels: channels of the input (3 for images, a stage's width after a stage).
        width, hidden: the localisation network's conv width and hidden units.
        pool: the side of the grid the localisation features are pooled to before the fully connected
            layer; ``None`` picks it from ``input_size`` (see :func:`loc_pool_size`), else 4.
        input_size: ``(H, W)`` (or a side) of the maps the transformer will see, if known.
        loc_net: a module mapping the input to ``[N, F]`` features with attribute ``out_features``,
            replacing the default :class:`LocalisationNet`.
        out_size: ``(H, W)`` of the output grid; ``None`` keeps the input's size. A smaller grid
            downsamples (the paper's Sec. 3.3 notes this as a way to save computation).
        padding_mode: what the sampler reads outside the input, ``"zeros"`` (the paper) or ``"border"``.
    """

    def __init__(self, channels: int, *, width: int = 20, hidden: int = 50, pool: int | None = None,
                 input_size=None, loc_net: nn.Module | None = None, out_size: tuple[int, int] | None = None,
                 padding_mode: str = "zeros"):
        super().__init__()
        check_range("channels", channels, low=1)
        if pool is None:
            pool = loc_pool_size(input_size) if input_size is not None else 4
        if padding_mode not in ("zeros", "border", "reflection"):
            raise ExciteError(f"padding_mode={padding_mode!r} is not valid; expected zeros, border or reflection")
        self.loc = loc_net if loc_net is not None else LocalisationNet(channels, width=width, hidden=hidden, pool=pool)
        self.theta = nn.Linear(self.loc.out_features, 6)
        self.out_size = tuple(out_size) if out_size is not None else None
        self.padding_mode = padding_mode
        self.reset_identity()

    def reset_identity(self) -> None:
        """Set the regression layer to output the identity transform for every input (Sec. 4.1)."""
        with torch.no_grad():
            self.theta.weight.zero_()
            self.theta.bias.copy_(torch.tensor(IDENTITY_THETA))

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """The affine matrices ``[N, 2, 3]`` the localisation network predicts for ``x``, in the
        normalised coordinates of ``F.affine_grid`` (-1..1 across the image)."""
        return self.theta(self.loc(x)).view(-1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.transform(x)
        n, c, h, w = x.shape
        oh, ow = self.out_size or (h, w)
        # align_corners=False: -1 and 1 are the outer edges of the corner pixels, so the identity
        # transform samples every pixel centre (exactly at power-of-two sizes, to ~1e-6 otherwise).
        if torch.onnx.is_in_onnx_export():
            grid = _affine_grid_matmul(theta, oh, ow)
        else:
            grid = F.affine_grid(theta, [n, c, oh, ow], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode=self.padding_mode, align_corners=False)


def _affine_grid_matmul(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``F.affine_grid(theta, [n, c, h, w], align_corners=False)`` as a matrix product with the pixel
    centres ``(x, y, 1)``. ONNX has an AffineGrid operator only from opset 20; written this way the
    exported graph needs only MatMul and GridSample (opset 16), so the default opset 17 works."""
    xs = (torch.arange(w, dtype=theta.dtype, device=theta.device) * 2 + 1) / w - 1
    ys = (torch.arange(h, dtype=theta.dtype, device=theta.device) * 2 + 1) / h - 1
    base = torch.stack([xs.expand(h, w), ys[:, None].expand(h, w), torch.ones(h, w, dtype=theta.dtype,
                                                                              device=theta.device)], -1)
    return (base.view(1, h * w, 3) @ theta.transpose(1, 2)).view(-1, h, w, 2)


def _input_channels(model: nn.Module) -> int:
    """Input channels of a model: those of its first convolution."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise ExciteError("cannot find the model's input channels (no Conv2d); pass channels=")


def _output_shape(model: nn.Module, module: nn.Module, where: str) -> tuple:
    """The shape of a submodule's output, found by running the model once on one image of its
    ``default_input_size`` (or ``input_size``) on the model's device (meta included)."""
    seen = {}

    def record(_m, _i, out):  # returns None: the output passes through unchanged
        seen["shape"] = tuple(out.shape)

    h = module.register_forward_hook(record)
    size = tuple(getattr(model, "default_input_size", (3, 32, 32)))
    device = next(model.parameters()).device
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()
            model(torch.zeros(1, *size, device=device))
    finally:
        h.remove()
        model.train(was_training)
    if "shape" not in seen:
        raise ExciteError(f"module {where!r} is not called in the model's forward pass")
    return seen["shape"]


class _BeforeModel:
    """Forward pre-hook transforming the model's input (a class so that models stay picklable)."""

    def __init__(self, stn_name: str):
        self.stn_name = stn_name

    def __call__(self, model, args):
        return (getattr(model, self.stn_name)(args[0]), *args[1:])


class _AfterModule:
    """Forward hook replacing a submodule's output by the transformer's output on it. A class instead
    of a closure so that models stay picklable and ``copy.deepcopy`` copies the reference correctly."""

    def __init__(self, owner: nn.Module, stn_name: str):
        self.owner, self.stn_name = owner, stn_name

    def __call__(self, module, args, out):
        return getattr(self.owner, self.stn_name)(out)


def with_stn(model: nn.Module, where: str = "input", *, channels: int | None = None, **kwargs) -> nn.Module:
    """Attach a :class:`SpatialTransformer` to ``model`` (in place; returns ``model``).

    Args:
        model: any image model (a registered one, or your own ``nn.Module``).
        where: ``"input"`` transforms the image before the model sees it (the paper's ST-CNN);
            a submodule's qualified name (``"layer1"``, ``"features.3"``) transforms that module's output.
        channels: the channels the transformer sees; found from the model when omitted.
        **kwargs: options of :class:`SpatialTransformer` (``width``, ``hidden``, ``out_size`` ...);
            ``input_size`` defaults to the model's ``default_input_size`` (or the submodule's output size).

    The transformer is stored as ``model.stn`` (input) or ``model.stn_<where>`` (dots become
    underscores) and applied with a forward (pre-)hook, so the model's own ``state_dict`` keys are
    unchanged. At initialisation it is the identity: the model computes what it computed before.
    """
    if not isinstance(where, str) or not where:
        raise ExciteError(f"where={where!r} is not valid; expected 'input' or a submodule name")
    name = "stn" if where == "input" else "stn_" + where.replace(".", "_")
    if hasattr(model, name):
        raise ExciteError(f"the model already has an attribute {name!r}; a transformer is attached there already")
    if where == "input":
        kwargs.setdefault("input_size", tuple(getattr(model, "default_input_size", (3, 32, 32)))[1:])
        stn = SpatialTransformer(channels or _input_channels(model), **kwargs)
        model.add_module(name, stn)
        model.register_forward_pre_hook(_BeforeModel(name))
        return model
    modules = dict(model.named_modules())
    if where not in modules:
        options = [n for n, m in model.named_children()]
        raise ExciteError(f"where={where!r} is not a submodule of the model; top-level ones: {', '.join(options)}")
    target = modules[where]
    shape = _output_shape(model, target, where)
    kwargs.setdefault("input_size", shape[2:])
    stn = SpatialTransformer(channels or shape[1], **kwargs)
    model.add_module(name, stn)
    target.register_forward_hook(_AfterModule(model, name))
    return model


def stn_of(model: nn.Module) -> dict[str, SpatialTransformer]:
    """The spatial transformers inside ``model``, by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, SpatialTransformer)}


def resolve_stn_option(stn) -> tuple[str, dict] | None:
    """Turn a ``stn=`` model option into ``(where, kwargs)`` for :func:`with_stn`, or ``None``.

    ``False``/``None`` -> no transformer; ``True`` or ``"input"`` -> in front of the model; another
    string -> after that submodule; a dict ``{"where": ..., **SpatialTransformer options}``.
    """
    if stn is None or stn is False:
        return None
    if stn is True:
        return "input", {}
    if isinstance(stn, str):
        return stn, {}
    if isinstance(stn, dict):
        kw = dict(stn)
        return str(kw.pop("where", "input")), kw
    raise ExciteError(f"stn={stn!r} is not valid; expected true, 'input', a submodule name or a dict with 'where'")
