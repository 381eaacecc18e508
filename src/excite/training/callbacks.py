"""What a run reports while it goes: a progress bar, TensorBoard scalars (if the package is there),
and the caller's ``on_epoch``. The loop calls ``on_step`` and ``on_epoch``; none of them changes it."""

from __future__ import annotations

from tqdm import tqdm

from excite.core.errors import ExciteError


class Callback:
    """The hooks a reporter may implement (each a no-op here)."""

    def on_step(self, step: int, epoch: int, loss: float, img_per_s: float) -> None:
        """After each optimizer step (``loss`` of that step, throughput so far)."""

    def on_epoch(self, row: dict) -> None:
        """After each evaluated epoch, with its log row."""

    def close(self) -> None:
        """When the run ends, however it ends."""


class ProgressBar(Callback):
    """A tqdm bar over every step of the run, with epoch, loss and images per second."""

    def __init__(self, total: int, initial: int, epochs: int):
        self.epochs = epochs
        self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=False)

    def on_step(self, step, epoch, loss, img_per_s):
        self.bar.set_postfix_str(f"ep {epoch + 1}/{self.epochs} loss {loss:.3f} {img_per_s:.0f} img/s")
        self.bar.update(1)

    def retotal(self, total: int) -> None:
        """A time budget re-planned the run's length."""
        if self.bar.total != total:
            self.bar.total = total
            self.bar.refresh()

    def close(self):
        self.bar.close()


class TensorBoard(Callback):
    """Scalars under ``<out>/tensorboard``: train/loss, train/lr, train/img_per_s, test/top1, test/top5."""

    def __init__(self, folder: str):
        self.writer = summary_writer_cls()(folder)

    def on_epoch(self, row):
        for key in ("loss", "lr", "img_per_s"):
            self.writer.add_scalar(f"train/{key}", row[key], row["step"])
        for key in ("top1", "top5"):
            self.writer.add_scalar(f"test/{key}", row[key], row["step"])
        self.writer.flush()

    def close(self):
        self.writer.close()


class EpochFunction(Callback):
    """The caller's ``on_epoch(row)`` (with the run's ``epochs`` added): progress for a study."""

    def __init__(self, fn, epochs: int):
        self.fn, self.epochs = fn, epochs

    def on_epoch(self, row):
        self.fn(dict(row, epochs=self.epochs))


def summary_writer_cls():
    """``torch.utils.tensorboard.SummaryWriter``, or a one-line error if the optional package is missing."""
    try:
        import tensorboard  # noqa: F401 - optional package
        from torch.utils.tensorboard import SummaryWriter  # optional package
    except ImportError:
        raise ExciteError("--tensorboard needs the 'tensorboard' package, which is not installed: "
                          "pip install tensorboard") from None
    return SummaryWriter


class Callbacks(Callback):
    """Every reporter of a run, called in order."""

    def __init__(self, items: list[Callback]):
        self.items = items

    def on_step(self, *a):
        for c in self.items:
            c.on_step(*a)

    def on_epoch(self, row):
        for c in self.items:
            c.on_epoch(row)

    def retotal(self, total: int) -> None:
        for c in self.items:
            if isinstance(c, ProgressBar):
                c.retotal(total)

    def close(self):
        for c in self.items:
            c.close()


def check_callbacks(cfg) -> None:
    """Refuse, before anything is written, what the reporters cannot do: TensorBoard without a folder
    or without its package (checked on every rank, so no rank waits for a failed one)."""
    if cfg.tensorboard:
        if not cfg.out:
            raise ExciteError("--tensorboard needs --out (the folder the event files go to)")
        summary_writer_cls()


def make_callbacks(cfg, out, rank: int, on_epoch=None, *, total: int = 0, initial: int = 0) -> Callbacks:
    """The reporters ``cfg`` asks for (only rank 0 reports): a bar over ``total`` steps from ``initial``."""
    if rank != 0:
        return Callbacks([])
    items: list[Callback] = []
    if cfg.progress:
        items.append(ProgressBar(total, initial, cfg.epochs))
    if cfg.tensorboard:
        items.append(TensorBoard(str(out / "tensorboard")))
    if on_epoch is not None:
        items.append(EpochFunction(on_epoch, cfg.epochs))
    return Callbacks(items)
