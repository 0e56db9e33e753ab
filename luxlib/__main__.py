"""``python -m luxlib``: train a small convolutional network built only from luxlib calls.

The network (conv -> batchnorm+relu -> dropout -> strided conv+bias+relu -> dense) is
trained with plain SGD on a synthetic image-classification set generated here:
noisy 12x12 images of one of four oriented bars (horizontal, vertical, diagonal,
anti-diagonal) at a random place. Chance is 25%. Every layer's gradient comes from
``luxlib.vjp``; only the softmax cross-entropy loss is plain NumPy.
"""

import argparse
import time

import numpy as np

import luxlib

IMAGE = 12
CLASSES = 4


def make_dataset(rng, n, noise=0.6):
    """Return ``(images, labels)``: ``(n, 1, IMAGE, IMAGE)`` float32 images, int labels."""
    labels = rng.integers(0, CLASSES, n)
    images = rng.normal(0.0, noise, (n, 1, IMAGE, IMAGE)).astype(np.float32)
    length = 6
    for i, label in enumerate(labels):
        r, c = rng.integers(0, IMAGE - length, 2)
        steps = np.arange(length)
        if label == 0:
            rows, cols = np.full(length, r), c + steps
        elif label == 1:
            rows, cols = r + steps, np.full(length, c)
        elif label == 2:
            rows, cols = r + steps, c + steps
        else:
            rows, cols = r + steps, c + length - 1 - steps
        images[i, 0, rows, cols] += 1.5
    return images, labels


def init_params(rng):
    def he(shape, fan_in):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    return {
        "w1": he((16, 1, 3, 3), 9),
        "scale1": np.ones(16, np.float32),
        "shift1": np.zeros(16, np.float32),
        "w2": he((32, 16, 3, 3), 16 * 9),
        "b2": np.zeros(32, np.float32),
        "w3": he((CLASSES, 32 * 6 * 6), 32 * 6 * 6),
        "b3": np.zeros(CLASSES, np.float32),
    }


class Model:
    """Parameters, running statistics and the convolution geometry of the demo network."""

    def __init__(self, rng, batch_size, dropout=0.1):
        self.params = init_params(rng)
        self.running_mean = np.zeros(16, np.float32)
        self.running_var = np.ones(16, np.float32)
        self.dropout = dropout
        self.batch_size = batch_size

    def forward(self, x, rng, training):
        """Return ``(logits, rng, pullback)``; ``pullback(dlogits)`` gives parameter grads."""
        p = self.params
        cd1 = luxlib.ConvDims(x.shape, p["w1"].shape, padding=1)
        h1, pb1 = luxlib.vjp(luxlib.fused_conv_bias_activation, None, p["w1"], x, None, cd1)
        (h2, stats), pb2 = luxlib.vjp(
            luxlib.batchnorm, h1, p["scale1"], p["shift1"], self.running_mean, self.running_var,
            training, "relu",
        )
        if training:
            self.running_mean, self.running_var = stats
        (h3, _, rng), pb3 = luxlib.vjp(luxlib.dropout, rng, h2, self.dropout, training)
        cd2 = luxlib.ConvDims(h3.shape, p["w2"].shape, stride=2, padding=1)
        h4, pb4 = luxlib.vjp(luxlib.fused_conv_bias_activation, "relu", p["w2"], h3, p["b2"], cd2)
        flat = h4.reshape(h4.shape[0], -1)
        logits, pb5 = luxlib.vjp(luxlib.fused_dense_bias_activation, None, p["w3"], flat, p["b3"])

        def pullback(dlogits):
            _, dw3, dflat, db3 = pb5(dlogits)
            _, dw2, dh3, db2, _ = pb4(dflat.reshape(h4.shape))
            dh2 = pb3(dh3)[1]
            dh1, dscale1, dshift1 = pb2(dh2)[:3]
            dw1 = pb1(dh1)[1]
            return {"w1": dw1, "scale1": dscale1, "shift1": dshift1, "w2": dw2, "b2": db2, "w3": dw3, "b3": db3}

        return logits, rng, pullback


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy loss and its gradient with respect to the logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = logits.shape[0]
    loss = -logp[np.arange(n), labels].mean()
    grad = np.exp(logp)
    grad[np.arange(n), labels] -= 1
    return float(loss), (grad / n).astype(logits.dtype)


def accuracy(model, images, labels, rng, batch_size):
    correct = 0
    for start in range(0, len(images), batch_size):
        logits, _, _ = model.forward(images[start : start + batch_size], rng, training=False)
        correct += int((logits.argmax(axis=1) == labels[start : start + batch_size]).sum())
    return correct / len(images)


def train(epochs=6, batch_size=64, seed=0, lr=0.05, n_train=4096, n_test=1024, log=print):
    """Train the demo network; return the final test accuracy."""
    rng = np.random.default_rng(seed)
    x_train, y_train = make_dataset(rng, n_train)
    x_test, y_test = make_dataset(rng, n_test)
    model = Model(rng, batch_size)
    log(f"luxlib {luxlib.__version__}: {n_train} training / {n_test} test images, {CLASSES} classes "
        f"(chance {1 / CLASSES:.0%}), backend {luxlib.internal_operation_mode(x_train)!r}")
    acc = 0.0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        order = rng.permutation(n_train)
        losses = []
        for i in range(0, n_train - batch_size + 1, batch_size):
            idx = order[i : i + batch_size]
            logits, rng, pullback = model.forward(x_train[idx], rng, training=True)
            loss, dlogits = softmax_cross_entropy(logits, y_train[idx])
            losses.append(loss)
            for name, grad in pullback(dlogits).items():
                model.params[name] -= lr * grad
        acc = accuracy(model, x_test, y_test, rng, 256)
        log(f"epoch {epoch:2d}  loss {np.mean(losses):.4f}  test accuracy {acc:6.2%}  "
            f"time {time.perf_counter() - start:5.2f} s")
    log(f"final test accuracy {acc:.2%} (chance {1 / CLASSES:.0%})")
    return acc


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m luxlib",
        description="Train a small conv + batchnorm + dropout + dense network, built only from "
        "luxlib calls and luxlib.vjp, with plain SGD on a synthetic image-classification set.",
    )
    parser.add_argument("--epochs", type=int, default=6, help="passes over the training set (default 6)")
    parser.add_argument("--batch-size", type=int, default=64, help="minibatch size (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed for data, weights and dropout (default 0)")
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default 0.05)")
    parser.add_argument("--threads", type=int, default=None, help="luxlib kernel threads (default: all cores)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        luxlib.set_num_threads(args.threads)
    train(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, lr=args.lr)


if __name__ == "__main__":
    main()
