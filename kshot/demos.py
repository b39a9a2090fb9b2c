"""The book's chapter-1 exercise: k-nearest neighbours against a small neural net on scarce data.

*Hands-On One-shot Learning with Python*, chapter 1, motivates few-shot learning with a small
experiment: take only 30 iris flowers, train a kNN classifier (k=3) and a multi-layer perceptron
with three hidden layers of 13 units on 80% of them and score both on the other 20%. With so
little data the non-parametric kNN holds its own against (or beats) the network, which needs
more data to fit its weights. :func:`knn_vs_mlp` repeats that experiment over many random draws
so the comparison comes with a confidence interval instead of resting on one lucky split;
:func:`format_knn_vs_mlp` prints it as a table and :func:`plot_iris_3d` draws the book's 3-D
scatter plot of the data.

Chapter 2's exercise, :func:`siamese_mnist`, trains the book's small Siamese network (``booknet``:
two conv + max-pool stages, then fully connected 500 → 10 → 2) with the contrastive loss on
2,000 MNIST digits and plots the 2-d embedding of digits it did not train on, one colour per
digit, next to the loss curve.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from sklearn.datasets import load_iris
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier

from kshot.config import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, Range, check_ranges
from kshot.errors import KShotError
from kshot.plots import save_figure_atomically

__all__ = [
    "KnnVsMlpConfig",
    "SiameseMnistConfig",
    "SiameseMnistResult",
    "format_knn_vs_mlp",
    "format_siamese_mnist",
    "knn_vs_mlp",
    "plot_iris_3d",
    "siamese_mnist",
]

_MAX_SKLEARN_SEED = 2**31 - 1  # sklearn random_state must fit in a 32-bit signed int


@dataclass
class KnnVsMlpConfig:
    """Settings of the kNN-vs-MLP experiment; the defaults are the book's."""

    n_points: int = 30
    """How many iris flowers (of 150) one draw uses, train and test together."""
    test_fraction: float = 0.2
    """Share of a draw's points held out for scoring (the rest trains both models)."""
    k: int = 3
    """Neighbours the kNN classifier votes over."""
    hidden: tuple[int, ...] = (13, 13, 13)
    """Hidden layer widths of the MLP."""
    draws: int = 200
    """How many independent random draws (sample, split, fit, score) to average over."""
    seed: int = 0
    """Seed of the one numpy Generator every draw's sample, split and model seeds come from."""
    max_iter: int = 1000
    """Adam epochs the MLP may run (it usually stops earlier on 24 training points)."""

    def validate(self, n_available: int = 150) -> None:
        """Raise :class:`KShotError` if the settings cannot describe a valid experiment."""
        if not 4 <= self.n_points <= n_available:
            raise KShotError(
                f"n_points={self.n_points} is outside 4..{n_available}; iris has "
                f"{n_available} flowers, pick a sample size in that range"
            )
        if not 0.0 < self.test_fraction < 1.0:
            raise KShotError(
                f"test_fraction={self.test_fraction} must be strictly between 0 and 1 (e.g. 0.2)"
            )
        n_test = _test_size(self.n_points, self.test_fraction)
        n_train = self.n_points - n_test
        if n_test < 1 or n_train < 1:
            raise KShotError(
                f"n_points={self.n_points} with test_fraction={self.test_fraction} leaves "
                f"{n_train} train / {n_test} test points; use more points or a fraction nearer 0.5"
            )
        if not 1 <= self.k <= n_train:
            raise KShotError(
                f"k={self.k} must be between 1 and the {n_train} training points of a draw; "
                "lower k or raise n_points"
            )
        if not self.hidden or any(int(width) < 1 for width in self.hidden):
            raise KShotError(
                f"hidden={self.hidden} must be a non-empty tuple of positive layer widths, "
                "e.g. (13, 13, 13)"
            )
        if self.draws < 1:
            raise KShotError(f"draws={self.draws} must be at least 1")
        if self.max_iter < 1:
            raise KShotError(f"max_iter={self.max_iter} must be at least 1")


def _test_size(n_points: int, test_fraction: float) -> int:
    """Number of test points, rounded up as sklearn's ``train_test_split`` does."""
    return int(np.ceil(n_points * test_fraction))


def _sample_points(rng: np.random.Generator, n_available: int, n_points: int) -> np.ndarray:
    """Indices of ``n_points`` distinct flowers drawn from ``rng`` (the first step of a draw)."""
    return rng.choice(n_available, size=n_points, replace=False)


def _split(
    indices: np.ndarray, labels: np.ndarray, n_test: int, split_seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train / test index arrays; stratified by class when every class allows it, else plain."""
    try:
        train_indices, test_indices = train_test_split(
            indices, test_size=n_test, random_state=split_seed, stratify=labels[indices]
        )
    except ValueError:  # a class with a single flower, or fewer test slots than classes
        train_indices, test_indices = train_test_split(
            indices, test_size=n_test, random_state=split_seed
        )
    return train_indices, test_indices


def _mean_and_ci95(values: np.ndarray) -> tuple[float, float]:
    """Mean and 95% confidence half-width ``1.96 * std / sqrt(n)`` (population std)."""
    return float(np.mean(values)), float(1.96 * np.std(values) / np.sqrt(len(values)))


def knn_vs_mlp(config: KnnVsMlpConfig | None = None) -> dict[str, Any]:
    """Run the chapter-1 experiment: kNN against an MLP on ``config.draws`` small iris samples.

    Each draw samples ``n_points`` flowers, splits them ``1 - test_fraction`` / ``test_fraction``
    (stratified when possible), fits ``KNeighborsClassifier(k)`` and
    ``MLPClassifier(hidden, max_iter)`` on the training part and scores both on the test part.
    Everything random comes from one ``numpy.random.Generator(seed)``, so a seed fixes the result.

    Returns:
        A dict with ``knn_mean`` / ``knn_ci95`` and ``mlp_mean`` / ``mlp_ci95`` (mean test
        accuracy and 95% CI half-width ``1.96 * std / sqrt(draws)``), ``difference_mean`` /
        ``difference_ci95`` (paired kNN minus MLP accuracy), ``knn_wins``, ``mlp_wins`` and
        ``ties`` (draws where one scored higher, or both the same), ``knn_accuracies`` and
        ``mlp_accuracies`` (per draw, lists of floats), ``draws``, ``n_train``, ``n_test`` and
        ``config`` (the settings as a dict).

    Raises:
        KShotError: the config cannot describe a valid experiment.
    """
    config = config if config is not None else KnnVsMlpConfig()
    iris = load_iris()
    features, labels = iris.data, iris.target  # [150, 4], [150]
    config.validate(n_available=len(labels))
    n_test = _test_size(config.n_points, config.test_fraction)
    rng = np.random.default_rng(config.seed)

    knn_correct = np.zeros(config.draws, dtype=np.int64)
    mlp_correct = np.zeros(config.draws, dtype=np.int64)
    for draw in range(config.draws):
        sample_indices = _sample_points(rng, len(labels), config.n_points)
        split_seed, mlp_seed = (int(seed) for seed in rng.integers(_MAX_SKLEARN_SEED, size=2))
        train_indices, test_indices = _split(sample_indices, labels, n_test, split_seed)
        train_x, train_y = features[train_indices], labels[train_indices]
        test_x, test_y = features[test_indices], labels[test_indices]

        knn = KNeighborsClassifier(n_neighbors=config.k).fit(train_x, train_y)
        mlp = MLPClassifier(
            hidden_layer_sizes=tuple(int(width) for width in config.hidden),
            max_iter=config.max_iter,
            random_state=mlp_seed,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=ConvergenceWarning)
            mlp.fit(train_x, train_y)
        # Counting correct answers (integers) keeps ties exact.
        knn_correct[draw] = int(np.sum(knn.predict(test_x) == test_y))
        mlp_correct[draw] = int(np.sum(mlp.predict(test_x) == test_y))

    knn_accuracies = knn_correct / n_test
    mlp_accuracies = mlp_correct / n_test
    knn_mean, knn_ci95 = _mean_and_ci95(knn_accuracies)
    mlp_mean, mlp_ci95 = _mean_and_ci95(mlp_accuracies)
    difference_mean, difference_ci95 = _mean_and_ci95(knn_accuracies - mlp_accuracies)
    return {
        "knn_mean": knn_mean,
        "knn_ci95": knn_ci95,
        "mlp_mean": mlp_mean,
        "mlp_ci95": mlp_ci95,
        "difference_mean": difference_mean,
        "difference_ci95": difference_ci95,
        "knn_wins": int(np.sum(knn_correct > mlp_correct)),
        "mlp_wins": int(np.sum(mlp_correct > knn_correct)),
        "ties": int(np.sum(knn_correct == mlp_correct)),
        "knn_accuracies": knn_accuracies.tolist(),
        "mlp_accuracies": mlp_accuracies.tolist(),
        "draws": config.draws,
        "n_train": config.n_points - n_test,
        "n_test": n_test,
        "config": asdict(config),
    }


def format_knn_vs_mlp(result: dict[str, Any]) -> str:
    """A markdown table of a :func:`knn_vs_mlp` result plus a one-line conclusion."""
    config = result["config"]
    hidden = ", ".join(str(width) for width in config["hidden"])
    lines = [
        "| method | mean accuracy ± 95% CI | wins |",
        "|---|---|---|",
        (
            f"| kNN (k={config['k']}) | {result['knn_mean']:.3f} ± {result['knn_ci95']:.3f} "
            f"| {result['knn_wins']} |"
        ),
        (
            f"| MLP ({hidden}) | {result['mlp_mean']:.3f} ± {result['mlp_ci95']:.3f} "
            f"| {result['mlp_wins']} |"
        ),
        "",
    ]
    difference, difference_ci95 = result["difference_mean"], result["difference_ci95"]
    setting = (
        f"over {result['draws']} draws of {config['n_points']} iris flowers "
        f"({result['n_train']} train / {result['n_test']} test), {result['ties']} ties"
    )
    if difference - difference_ci95 > 0:
        verdict = "kNN is more accurate than the MLP"
    elif difference + difference_ci95 < 0:
        verdict = "the MLP is more accurate than kNN"
    else:
        verdict = "kNN and the MLP are not significantly different"
    lines.append(
        f"Conclusion: {verdict} {setting}; paired difference (kNN − MLP) "
        f"{difference:+.3f} ± {difference_ci95:.3f}."
    )
    return "\n".join(lines)


def plot_iris_3d(
    path: str | os.PathLike,
    seed: int = 0,
    n_points: int = 30,
    feature_indices: tuple[int, int, int] = (0, 1, 2),
) -> Path:
    """Save the book's 3-D scatter plot of iris as a PNG, the sampled flowers drawn larger.

    All 150 flowers are plotted faintly on three of the four features, coloured by species; the
    ``n_points`` flowers a :func:`knn_vs_mlp` run with this ``seed`` uses in its first draw are
    drawn large with a black edge. The file is written atomically.

    Args:
        path: where to write the PNG (parent folders are created).
        seed: the experiment seed whose first-draw sample is highlighted.
        n_points: how many flowers the draw samples.
        feature_indices: which three of the four iris features go on the x, y and z axes.

    Returns:
        The path of the written PNG.
    """
    iris = load_iris()
    features, labels = iris.data, iris.target
    if not 1 <= n_points <= len(labels):
        raise KShotError(f"n_points={n_points} is outside 1..{len(labels)}; iris has 150 flowers")
    if len(feature_indices) != 3 or not all(0 <= index < 4 for index in feature_indices):
        raise KShotError(
            f"feature_indices={feature_indices} must be three indices in 0..3 "
            "(sepal length, sepal width, petal length, petal width)"
        )
    sampled = np.zeros(len(labels), dtype=bool)
    sampled[_sample_points(np.random.default_rng(seed), len(labels), n_points)] = True

    figure = Figure(figsize=(7, 6))
    axes = figure.add_subplot(projection="3d")
    x_index, y_index, z_index = feature_indices
    colors = ("tab:blue", "tab:orange", "tab:green")
    for class_index, class_name in enumerate(iris.target_names):
        of_class = labels == class_index
        rest, chosen = of_class & ~sampled, of_class & sampled
        axes.scatter(features[rest, x_index], features[rest, y_index], features[rest, z_index],
                     color=colors[class_index], s=12, alpha=0.3)
        axes.scatter(features[chosen, x_index], features[chosen, y_index],
                     features[chosen, z_index], color=colors[class_index], s=60,
                     edgecolors="black", linewidths=0.8,
                     label=f"{class_name} ({int(chosen.sum())} sampled)")
    axes.set_xlabel(iris.feature_names[x_index])
    axes.set_ylabel(iris.feature_names[y_index])
    axes.set_zlabel(iris.feature_names[z_index])
    axes.set_title(f"iris: {n_points} sampled flowers (large) of {len(labels)} (seed {seed})")
    axes.legend(loc="upper left", fontsize=8)
    return save_figure_atomically(figure, path)


# ------------------------------------------------------------------- chapter 2: Siamese on MNIST
@dataclass
class SiameseMnistConfig:
    """Settings of the book's Siamese MNIST exercise; the model, loss and optimiser are the book's."""

    train_images: int = 2000
    """MNIST images the network trains on (the book: 2,000)."""
    plot_images: int = 1000
    """Held-out images whose 2-d embeddings are plotted (none of them is trained on)."""
    epochs: int = 10
    """Passes over the training pairs (the book runs 100; the picture is clear after a few)."""
    batch_size: int = 128
    """Pairs per SGD step (the book: 128)."""
    lr: float = 0.01
    """SGD learning rate (the book: 0.01)."""
    momentum: float = 0.9
    """SGD momentum (the book: 0.9)."""
    margin: float = 1.0
    """Margin of the contrastive loss (the book: 1.0)."""
    seed: int = 0
    """Seed of the image split, the pairs, the batches and the weights."""
    out_dir: str = "."
    """Folder of the two PNGs."""

    def __post_init__(self) -> None:
        check_ranges(self, train_images=Range(20), plot_images=AT_LEAST_ONE, epochs=AT_LEAST_ONE,
                     batch_size=AT_LEAST_ONE, lr=POSITIVE, momentum=FRACTION,
                     margin=POSITIVE, seed=NON_NEGATIVE)


@dataclass
class SiameseMnistResult:
    """What :func:`siamese_mnist` did: the PNGs, the split, the losses and a held-out score."""

    embedding_plot: Path
    loss_plot: Path
    train_indices: np.ndarray = field(repr=False)
    """Indices (into the 10,000 MNIST test images as kshot holds them) trained on."""
    heldout_indices: np.ndarray = field(repr=False)
    """Indices of the plotted images: disjoint from ``train_indices``."""
    pairs_per_epoch: int
    batch_losses: list[float] = field(repr=False)
    epoch_losses: list[float]
    heldout_accuracy: float
    """Share of the held-out images whose nearest training image (in the 2-d embedding) shows
    the same digit."""
    seconds: float
    config: dict[str, Any]


def balanced_pairs(labels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Two pairs per item, one same-class and one different-class, drawn from ``generator``:
    ``labels [N]`` (classes ``0..C-1``, each with at least two items, at least two classes) ->
    ``first [2N]``, ``second [2N]`` item indices and ``same [2N]`` (True: same class)."""
    n_items, n_classes = len(labels), int(labels.max()) + 1
    order = labels.argsort(stable=True)  # items grouped by class
    counts = torch.bincount(labels, minlength=n_classes)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n_items, dtype=torch.long)
    rank[order] = torch.arange(n_items) - starts[labels[order]]  # position within its class
    # same class: another item of the class, a random nonzero step around the class's block
    step = (torch.rand(n_items, generator=generator) * (counts[labels] - 1)).long() + 1
    positive = order[starts[labels] + (rank + step) % counts[labels]]
    # different class: a random other class, then a random item of it
    other = (labels + 1 + (torch.rand(n_items, generator=generator) * (n_classes - 1)).long()
             ) % n_classes
    negative = order[starts[other] + (torch.rand(n_items, generator=generator)
                                      * counts[other]).long()]
    items = torch.arange(n_items)
    first = torch.cat([items, items])
    second = torch.cat([positive, negative])
    same = torch.cat([torch.ones(n_items, dtype=torch.bool), torch.zeros(n_items, dtype=torch.bool)])
    return first, second, same


def siamese_mnist(config: SiameseMnistConfig | None = None,
                  data_dir: str | os.PathLike | None = None,
                  progress: bool = False) -> SiameseMnistResult:
    """The book's chapter-2 exercise: a Siamese ``booknet`` trained with the contrastive loss.

    The images are MNIST's official test file (10,000 digits, the one at hand), split by one
    seeded permutation: its first ``train_images`` are trained on, the next ``plot_images`` are
    only embedded and plotted, so the plot shows digits the network never saw. Each epoch pairs
    every training image once with a random image of its digit and once with a random image of
    another digit (balanced, seeded), and runs SGD with momentum on the contrastive loss
    (euclidean distance, margin 1, the same-digit pairs pulled together, the others pushed at
    least the margin apart). Writes ``siamese_mnist_embeddings.png`` and ``siamese_mnist_loss.png``
    into ``out_dir``.
    """
    from kshot.data.mnist import load_mnist
    from kshot.nn.backbones import build_backbone
    from kshot.nn.losses import contrastive_loss, paired_distances

    config = config if config is not None else SiameseMnistConfig()
    started = time.perf_counter()
    data = load_mnist("test", data_dir=data_dir, progress=progress)
    needed = config.train_images + config.plot_images
    if needed > len(data.images):
        raise KShotError(f"--train-images {config.train_images} plus --plot-images "
                         f"{config.plot_images} exceed the {len(data.images)} MNIST test images; "
                         "lower one of them")
    labels = data.labels
    generator = torch.Generator().manual_seed(config.seed)
    permutation = torch.randperm(len(labels), generator=generator)
    train_indices = permutation[: config.train_images]
    heldout_indices = permutation[config.train_images : needed]
    train_x = data.to_float(data.images[train_indices])  # [n, 1, 28, 28] in [0, 1]
    train_y = labels[train_indices]
    if int(torch.bincount(train_y, minlength=10).min()) < 2:
        raise KShotError(f"--train-images {config.train_images} leaves a digit with fewer than "
                         "two images; use more training images")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_backbone("booknet", (1, 28, 28))
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    batch_losses: list[float] = []
    epoch_losses: list[float] = []
    model.train()
    for _ in range(config.epochs):
        first, second, same = balanced_pairs(train_y, generator)
        shuffle = torch.randperm(len(first), generator=generator)
        first, second, same = first[shuffle], second[shuffle], same[shuffle]
        total = 0.0
        for start in range(0, len(first), config.batch_size):
            chunk = slice(start, start + config.batch_size)
            n_pairs = len(first[chunk])
            embeddings = model(torch.cat([train_x[first[chunk]], train_x[second[chunk]]]))
            distances = paired_distances(embeddings[:n_pairs], embeddings[n_pairs:])
            loss = contrastive_loss(distances, same[chunk], config.margin)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            batch_losses.append(float(loss.detach()))
            total += batch_losses[-1] * n_pairs
        epoch_losses.append(total / len(first))

    model.eval()
    with torch.inference_mode():
        train_embeddings = model(train_x)
        heldout_embeddings = model(data.to_float(data.images[heldout_indices]))
    heldout_y = labels[heldout_indices]
    nearest = torch.cdist(heldout_embeddings, train_embeddings).argmin(1)
    heldout_accuracy = float((train_y[nearest] == heldout_y).float().mean())

    out_dir = Path(config.out_dir)
    embedding_plot = _plot_embeddings(heldout_embeddings.numpy(), heldout_y.numpy(),
                                      out_dir / "siamese_mnist_embeddings.png", config)
    loss_plot = _plot_losses(batch_losses, epoch_losses, len(first),
                             out_dir / "siamese_mnist_loss.png", config)
    return SiameseMnistResult(embedding_plot, loss_plot, train_indices.numpy(),
                              heldout_indices.numpy(), len(first), batch_losses, epoch_losses,
                              heldout_accuracy, time.perf_counter() - started, asdict(config))


def _plot_embeddings(embeddings: np.ndarray, labels: np.ndarray, path: Path,
                     config: SiameseMnistConfig) -> Path:
    figure = Figure(figsize=(7, 6))
    axes = figure.add_subplot()
    colours = [f"C{digit}" for digit in range(10)]  # matplotlib's ten-colour cycle
    for digit in range(10):
        chosen = labels == digit
        axes.scatter(embeddings[chosen, 0], embeddings[chosen, 1], s=8, color=colours[digit],
                     label=str(digit), alpha=0.8)
    axes.set_xlabel("embedding 1")
    axes.set_ylabel("embedding 2")
    axes.set_title(f"Siamese booknet, contrastive loss: {len(labels)} held-out MNIST digits\n"
                   f"(trained on {config.train_images} other images, {config.epochs} epochs, "
                   f"seed {config.seed})", fontsize=10)
    axes.legend(title="digit", loc="best", fontsize=8, markerscale=2)
    return save_figure_atomically(figure, path)


def _plot_losses(batch_losses: list[float], epoch_losses: list[float], pairs_per_epoch: int,
                 path: Path, config: SiameseMnistConfig) -> Path:
    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    steps_per_epoch = len(batch_losses) / max(len(epoch_losses), 1)
    axes.plot(np.arange(1, len(batch_losses) + 1) / steps_per_epoch, batch_losses,
              color="C0", alpha=0.4, linewidth=0.8, label="batch")
    axes.plot(np.arange(1, len(epoch_losses) + 1), epoch_losses, color="C1", marker="o",
              label="epoch mean")
    axes.set_xlabel("epoch")
    axes.set_ylabel("contrastive loss")
    axes.set_title(f"training loss ({pairs_per_epoch} balanced pairs per epoch, batch "
                   f"{config.batch_size})", fontsize=10)
    axes.legend()
    return save_figure_atomically(figure, path)


def format_siamese_mnist(result: SiameseMnistResult) -> str:
    """What :func:`siamese_mnist` did, where the PNGs are and how long it took."""
    config = result.config
    lines = [
        ("Siamese booknet (conv-pool x2, FC 500 -> 10 -> 2), contrastive loss (margin "
         f"{config['margin']:g}), SGD lr {config['lr']:g} momentum {config['momentum']:g}"),
        (f"data: the 10,000 MNIST test images, split by a permutation seeded {config['seed']}: "
         f"the first {len(result.train_indices)} trained on, the next "
         f"{len(result.heldout_indices)} held out (disjoint from them) and plotted"),
        (f"{config['epochs']} epoch(s) of {result.pairs_per_epoch} balanced pairs (each training "
         "image once with its digit, once with another): loss "
         f"{result.epoch_losses[0]:.4f} -> {result.epoch_losses[-1]:.4f}"),
        ("held-out digits whose nearest training image (2-d embedding) shows the same digit: "
         f"{result.heldout_accuracy:.1%}"),
        f"embeddings plot: {result.embedding_plot}",
        f"loss curve:      {result.loss_plot}",
        f"runtime: {result.seconds:.1f} s",
    ]
    return "\n".join(lines)
