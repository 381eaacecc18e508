"""Named training recipes, each with its source. A recipe is a dict of ``TrainConfig`` overrides."""

from __future__ import annotations

from excite.core.errors import unknown_name

RECIPES: dict[str, dict] = {
    # He et al. 2016, Sec. 4.2: SGD momentum 0.9, wd 1e-4, batch 128, lr 0.1 divided by 10 at 32k and
    # 48k iterations, stop at 64k (~182 epochs of 45k images -> 164 epochs of 50k); pad 4, crop, flip.
    "resnet-cifar": dict(
        source="He et al. 2016, Deep Residual Learning, Sec. 4.2 (CIFAR-10)",
        optimizer="sgd", lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4, batch_size=128,
        epochs=164, schedule="step", milestones=(0.5, 0.75), warmup_epochs=0, label_smoothing=0.0,
    ),
    # Hu et al. 2018 (SENet, Sec. 6) / Wang et al. 2020 (ECA-Net, Sec. 4.1): SGD momentum 0.9, wd 1e-4,
    # batch 256, lr 0.1 divided by 10 every 30 epochs, 100 epochs (ECA-Net); 224 crops, flips.
    "eca-imagenet": dict(
        source="Wang et al. 2020, ECA-Net, Sec. 4.1 (ImageNet), following Hu et al. 2018 (SENet)",
        optimizer="sgd", lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4, batch_size=256,
        epochs=100, schedule="step", milestones=(0.3, 0.6, 0.9), warmup_epochs=0, label_smoothing=0.0,
    ),
    # Short recipe for the embedded digits data, tuned on this project to fit the 10-minute demo:
    # nesterov SGD, one warmup epoch then cosine, light label smoothing.
    "digits-short": dict(
        source="excite (this project): short recipe for the embedded digits set",
        optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, batch_size=64,
        epochs=8, schedule="cosine", warmup_epochs=1, label_smoothing=0.1,
        # A run of a few hundred steps ends before a BatchNorm's running average has caught up with its
        # weights (CBAM's spatial gate keeps its reference momentum 0.01: after 140 steps a quarter of the
        # initial statistics remain, and one demo seed tested at 52% against 95% in training mode).
        precise_bn=512,
    ),
    # Fashion-MNIST at 28x28 (data/idx.py): the digits recipe's optimizer at batch 128, cosine over the
    # run, pad-4 crop and flip. 30 epochs is the full schedule; CPU runs here use fewer (--epochs),
    # the warm-up then shrinks with the run (at most a tenth of it, engine.lr_at).
    "fashion-mnist": dict(
        source="excite (this project): ResNet-20 on Fashion-MNIST, cosine schedule",
        optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, batch_size=128,
        epochs=30, schedule="cosine", warmup_epochs=1, label_smoothing=0.1,
    ),
    # The fast recipe: the speed anchors' recipe parts on a CPU budget (hlb-CIFAR10, airbench: Keller
    # Jordan 2024, "94% on CIFAR-10 in 3.29 seconds"), each a TrainConfig option so that the ablation
    # (benchmarks/fast_recipe.py) can switch it off: one-cycle lr over a wall-time budget, label
    # smoothing, an EMA of the weights (evaluated), flip TTA at the end only, one cheap evaluation,
    # channels-last. Data stay uint8 in memory, augmented a batch at a time (the in-memory loaders).
    # Measured (benchmarks/results/fast-recipe-throughput-*.json): training img/s on this CPU is flat
    # from batch 64 to 512, so batch 128 gives twice batch 256's updates in the same time; channels-last
    # had the faster median at every batch size (every row too noisy on the shared machine to be sure). The ablation (fast-recipe-ablation-*.json) switches each part off.
    "fashion-mnist-fast": dict(
        source="excite (this project): fast CPU recipe after hlb-CIFAR10 / airbench (Jordan 2024)",
        optimizer="sgd", lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4, batch_size=128,
        epochs=40, time_budget=30.0, schedule="onecycle", warmup_fraction=0.2, label_smoothing=0.1,
        ema_decay=0.99, eval_ema=True, tta_flip=True, eval_every=0, eval_batch_size=1000, channels_last=True,
    ),
}


def get_recipe(name: str) -> dict:
    """Return a copy of recipe ``name`` (without its ``source`` entry)."""
    if name not in RECIPES:
        raise unknown_name("recipe", name, RECIPES)
    r = dict(RECIPES[name])
    r.pop("source")
    return r
