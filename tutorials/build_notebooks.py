r"""Build the tutorial notebooks from this one script, and optionally execute them.

The notebooks in this folder are generated: edit the cells here, not in Jupyter, then
rebuild. That keeps the sources reviewable as plain Python and the notebooks in step
with each other.

    python tutorials/build_notebooks.py                  # write every .ipynb, without outputs
    python tutorials/build_notebooks.py --execute        # ...then run them (full mode), save with outputs
    python tutorials/build_notebooks.py --execute 03 05  # only the notebooks whose names start so
    python tutorials/build_notebooks.py --execute --quick  # quick mode (SMARTMIXED_QUICK=1), as the tests run them

The committed notebooks carry the outputs of a full run (``--execute``), so that they
read well on a code host; ``tests/test_notebooks.py`` executes them again in quick mode
and checks that the committed cells match this script. Notebook 7 reads MNIST from
``SMARTMIXED_DATA`` when it is set (else it downloads, or falls back to synth-digits).

Saved outputs must not show a path of the machine that ran them (the tests check the
committed and the re-executed outputs): a cell that trains changes into a scratch
folder first and names its run folders relative to it, and a dataset is shown by its
folder's name, not its full path.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}

QUICK_LINE = (
    'QUICK = os.environ.get("SMARTMIXED_QUICK") == "1"  # the test suite sets it: small sizes, seconds per notebook\n'
    'print("mode:", "quick (SMARTMIXED_QUICK=1, small sizes)" if QUICK else "full")'
)

MODE_NOTE = (
    "*The outputs saved with this notebook come from a full run (`SMARTMIXED_QUICK` unset); "
    "the test suite executes it in quick mode, with smaller sizes, in a few seconds. "
    "The first code cell prints the mode.*"
)


def md(text: str) -> nbformat.NotebookNode:
    """A Markdown cell from an indented triple-quoted string."""
    return nbformat.v4.new_markdown_cell(textwrap.dedent(text).strip())


def code(text: str) -> nbformat.NotebookNode:
    """A code cell from an indented triple-quoted string; a line ``QUICK_SETUP`` becomes :data:`QUICK_LINE`."""
    source = textwrap.dedent(text).strip()
    return nbformat.v4.new_code_cell(source.replace("QUICK_SETUP", QUICK_LINE))


# =====================================================================================
# 01: the candidate activations
# =====================================================================================
def notebook_01() -> list:
    return [
        md(
            rf"""
            # 1. The six candidate activations and their derivatives

            A SmartMixed network lets every hidden neuron choose its own activation from a
            pool of six candidates: ReLU, Sigmoid, Tanh, Leaky ReLU, ELU and SELU. Before
            anything is learned, each candidate needs two things: its value $f(x)$ for the
            forward pass and its derivative $f'(x)$ for the backward pass.

            In this notebook you will

            * plot the six candidates and their derivatives and see where they differ
              (saturation, kinks, slopes);
            * estimate a derivative by **central finite differences**, and see how the step
              $\epsilon$ trades truncation error against rounding error;
            * check every derivative of the library with `check_vjp`, and learn what the
              **relative error** it reports means, and what a wrong derivative looks like;
            * add a candidate of your own with `register_activation`, check its derivative,
              and let a SmartMixed network choose it from an extended pool.

            {MODE_NOTE}
            """
        ),
        code(
            r"""
            import os

            import matplotlib.pyplot as plt
            import numpy as np

            from smartmixed_np import DEFAULT_POOL, get_activation
            from smartmixed_np.gradcheck import GradcheckError, check_vjp, relative_error
            from smartmixed_np.plots import ACTIVATION_COLORS

            QUICK_SETUP
            rng = np.random.default_rng(0)
            """
        ),
        md(
            r"""
            ## The pool

            Every candidate is an `Activation` in a registry: a name, `forward(x)`,
            `derivative(x, y)` (with `y = forward(x)` passed in, because sigmoid and tanh
            are cheapest to differentiate through their output), a formula and the range
            its values are guaranteed to stay in. The default pool, in the order of the
            published code:
            """
        ),
        code(
            r"""
            pool = [get_activation(name) for name in DEFAULT_POOL]
            for act in pool:
                print(f"{act.name:<11} f(x) = {act.formula:<52} range {act.bounds}")
            """
        ),
        md(
            r"""
            ## Values and derivatives

            The derivative is what the backward pass multiplies the upstream gradient by,
            so its shape decides how gradient flows through a neuron. Look for:

            * **saturation**: sigmoid and tanh have $f'(x) \to 0$ for large $|x|$, so a
              neuron driven far from zero passes almost no gradient back;
            * **kinks** at $x = 0$: ReLU and Leaky ReLU jump from one slope to the other;
              SELU jumps from $\lambda\alpha \approx 1.76$ to $\lambda \approx 1.05$;
              ELU (with $\alpha = 1$) is the only one of the piecewise candidates whose
              derivative is continuous there;
            * **negative side**: ReLU passes nothing for $x < 0$, Leaky ReLU a little
              ($0.01$), ELU and SELU a smoothly decaying amount.
            """
        ),
        code(
            r"""
            x = np.linspace(-4, 4, 801)
            fig, (ax_f, ax_d) = plt.subplots(1, 2, figsize=(11, 4))
            for act in pool:
                y = act.forward(x)
                color = ACTIVATION_COLORS[act.name]
                ax_f.plot(x, y, color=color, label=act.name)
                ax_d.plot(x, act.derivative(x, y), color=color, label=act.name)
            ax_f.set(title="value $f(x)$", xlabel="$x$", ylim=(-2.2, 4.2))
            ax_d.set(title="derivative $f'(x)$", xlabel="$x$", ylim=(-0.1, 1.9))
            for ax in (ax_f, ax_d):
                ax.axhline(0, color="0.8", lw=0.8)
                ax.axvline(0, color="0.8", lw=0.8)
                ax.grid(alpha=0.3)
            ax_f.legend(loc="upper left")
            plt.tight_layout()
            plt.show()
            """
        ),
        md(
            r"""
            ## Central differences, and how to choose the step

            Without calculus, a derivative can be estimated from two evaluations:

            $$f'(x) \approx \frac{f(x + \epsilon) - f(x - \epsilon)}{2\epsilon}.$$

            Taylor expansion shows the error of this *central* difference is
            $\frac{\epsilon^2}{6} f'''(x)$: it shrinks quadratically with $\epsilon$. But the
            two values of $f$ are rounded, each with an error of about
            $\epsilon_{\mathrm{mach}} |f(x)|$, and dividing their difference by $2\epsilon$
            blows that up as $\epsilon_{\mathrm{mach}} |f(x)| / \epsilon$. The total error
            is smallest in between. The plot measures it for $\tanh$ at $x = 0.7$ in both
            precisions.
            """
        ),
        code(
            r"""
            tanh = get_activation("tanh")
            x0 = 0.7
            exact = 1 - np.tanh(x0) ** 2
            steps = np.logspace(-12, -0.5, 80)
            errors = {}
            for dtype in (np.float64, np.float32):
                xd = dtype(x0)
                estimates = [
                    (tanh.forward(np.array([xd + dtype(e)])) - tanh.forward(np.array([xd - dtype(e)])))[0] / (2 * dtype(e))
                    for e in steps
                ]
                errors[dtype.__name__] = np.abs(np.array(estimates, dtype=np.float64) - exact) / exact

            fig, ax = plt.subplots(figsize=(6.5, 4))
            for name, err in errors.items():
                ax.loglog(steps, np.maximum(err, 1e-17), marker=".", lw=1, label=name)
                best = steps[np.argmin(err)]
                print(f"{name}: smallest error {err.min():.1e} at eps = {best:.0e}")
            ax.set(xlabel=r"step $\epsilon$", ylabel="relative error of $f'(0.7)$",
                   title="central difference for tanh: truncation vs rounding")
            ax.grid(alpha=0.3, which="both")
            ax.legend()
            plt.show()
            """
        ),
        md(
            r"""
            On the right the error falls with slope 2 (truncation, $\epsilon^2$); on the
            left it rises with slope $-1$ (rounding, $1/\epsilon$). In float64 the best
            steps are around $10^{-5}$ to $10^{-6}$ and give ten or more correct digits; in
            float32 the best steps are near $10^{-2}$ to $10^{-3}$, where the error jumps about
            between $10^{-4}$ and $10^{-7}$ with the rounding. That is
            why every gradient check in this library runs in **float64** with
            $\epsilon = 10^{-6}$, and refuses float32 inputs.

            ## Checking a backward pass: `check_vjp`

            A backward pass never forms a derivative on its own: it receives the upstream
            gradient $u$ = `dout` and returns $J^\top u$, a *vector-Jacobian product*. For an
            elementwise activation the Jacobian is diagonal, so that is
            `dx = dout * f'(x)`. `check_vjp` checks exactly this product: it draws a random
            $u$, and compares the analytic $J^\top u$ with central differences of the scalar
            $\phi(x) = \langle u, f(x)\rangle$, one coordinate of $x$ at a time.

            Inputs are kept away from the kinks *by construction*: magnitudes are drawn from
            $[0.1, 3]$ and given a random sign, so no finite difference straddles $x = 0$.
            """
        ),
        code(
            r"""
            def away_from_zero(shape, low=0.1, high=3.0):
                # float64, |x| in [low, high]: central differences never cross a kink
                return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(low, high, size=shape)

            x = away_from_zero((6, 5))
            for act in pool:
                result = check_vjp(act.forward, [x], lambda dout, act=act: [dout * act.derivative(x, act.forward(x))])
                print(f"{act.name:<11} {result}   passed: {result.passed}")
            """
        ),
        md(
            r"""
            ## What the relative error means

            `check_vjp` reports, for analytic gradient $a$ and numeric estimate $n$,

            $$\mathrm{err}(a, n) = \frac{\lVert a - n\rVert}{\max(\lVert a\rVert + \lVert n\rVert,\ \mathrm{floor})}.$$

            Dividing by the sizes of the gradients makes the number scale-free: it reads as
            "the fraction of the gradient that disagrees", whether the gradient is
            $10^{-3}$ or $10^{3}$. It lies in $[0, 1]$ (1 means $a$ and $n$ have nothing in
            common, e.g. a sign flip or a zero gradient). The floor (set from the rounding
            noise of the differences themselves) keeps two gradients that are both
            essentially zero from being judged by noise.

            How to read it, in float64 with $\epsilon = 10^{-6}$:

            | error | meaning |
            | --- | --- |
            | $10^{-12}$ to $10^{-8}$ | correct: the leftover is finite-difference error |
            | around $10^{-6}$ (the threshold) | suspicious: a kink or clamp edge inside $[x-\epsilon, x+\epsilon]$, or a step that is too small |
            | $10^{-3}$ and above | wrong: a bug in the formula |

            Here is what real bugs look like. Each is a plausible slip:
            """
        ),
        code(
            r"""
            sigmoid, selu = get_activation("sigmoid"), get_activation("selu")
            buggy = {
                "sigmoid: f' = f (forgot the 1 - f)": (sigmoid, lambda x, y: y),
                "selu: forgot the scale lambda for x > 0": (selu, lambda x, y: np.where(x > 0, 1.0, selu.derivative(x, y))),
                "tanh: f' = 1 - x^2 (x instead of y)": (tanh, lambda x, y: 1 - x * x),
            }
            for label, (act, wrong) in buggy.items():
                result = check_vjp(act.forward, [x], lambda dout: [dout * wrong(x, act.forward(x))], raise_on_failure=False)
                print(f"{label:<42} relative error {result.max_error:.2e}  passed: {result.passed}")
            """
        ),
        md(
            r"""
            The SELU bug changes the derivative by only 5% on half of the inputs, yet its
            error is four orders of magnitude above the threshold: a finite-difference check
            is far more sensitive than eyeballing a plot. By default a failing check raises,
            so a test cannot forget to look at it:
            """
        ),
        code(
            r"""
            try:
                check_vjp(sigmoid.forward, [x], lambda dout: [dout * sigmoid.forward(x)])
            except GradcheckError as err:
                print("GradcheckError:", err)
            """
        ),
        md(
            r"""
            ## Why the inputs avoid the kinks

            At $x = 0$ a kinked function has no derivative; the library follows PyTorch's
            conventions (`relu'(0) = 0`, `leaky_relu'(0) = 0.01`, `elu'(0) = 1`). A central
            difference across the kink returns the *average* of the two one-sided slopes
            instead, so a check there would fail even though nothing is wrong:
            """
        ),
        code(
            r"""
            eps = 1e-6
            zero = np.zeros(1)
            for act in pool:
                central = (act.forward(zero + eps) - act.forward(zero - eps))[0] / (2 * eps)
                print(f"{act.name:<11} convention f'(0) = {act.derivative(zero, act.forward(zero))[0]:.4f}"
                      f"   central difference at 0 = {central:.4f}")
            """
        ),
        md(
            r"""
            Only the three kinked candidates disagree, by exactly half the jump. The
            property tests of the library therefore draw inputs away from kinks (and from
            the clamp edges used in phase 1), as done above.

            ## A candidate of your own: `register_activation`

            The pool is not closed. Any elementwise function with a derivative can be
            registered under a name and then used wherever a built-in name is: in a pool,
            as a fixed activation, in the figures. As an example, **softsign**:

            $$f(x) = \frac{x}{1 + |x|}, \qquad f'(x) = \frac{1}{(1 + |x|)^2}.$$

            It saturates like tanh, but polynomially instead of exponentially, so its
            gradient dies off more slowly. The forward takes its array module from the
            input (`array_module(x)`), so that the same function runs on NumPy and, with
            CuPy, on the GPU (notebook 6).
            """
        ),
        code(
            r"""
            from smartmixed_np import list_activations, register_activation
            from smartmixed_np.backend import array_module

            def softsign(x):
                xp = array_module(x)                 # NumPy or CuPy, wherever x lives
                return x / (1 + xp.abs(x))

            def softsign_derivative(x, y):           # y = softsign(x) is passed in; not needed here
                xp = array_module(x)
                return 1 / (1 + xp.abs(x)) ** 2

            # overwrite=True: re-running this cell replaces the registration instead of failing
            softsign_act = register_activation("softsign", softsign, softsign_derivative,
                                               formula=r"$x / (1 + |x|)$", bounds=(-1.0, 1.0), overwrite=True)
            print("registered:", softsign_act.name, "| all names:", ", ".join(list_activations()))
            """
        ),
        md(
            r"""
            Before a network uses it, its derivative gets the same check as the built-ins
            (its first derivative is continuous, but check away from 0 anyway, where its
            second derivative jumps), and a deliberately wrong derivative shows what a
            slip would look like:
            """
        ),
        code(
            r"""
            check = check_vjp(softsign, [x], lambda dout: [dout * softsign_derivative(x, softsign(x))])
            print("softsign:", check)
            wrong = check_vjp(softsign, [x], lambda dout: [dout / (1 + np.abs(x))], raise_on_failure=False)  # forgot the square
            print(f"softsign with f' = 1/(1+|x|): relative error {wrong.max_error:.1e}, passed: {wrong.passed}")
            """
        ),
        md(
            r"""
            ### Using it in a pool

            A pool is a list of names. Below, a small SmartMixed network chooses among the
            six defaults *and* softsign. First the whole network's gradient, softsign
            included, is checked against finite differences (`check_model_gradients`, in
            float64, with `hard=False`: the soft mixture is differentiable, while the hard
            selection would need the surrogate of notebook 3). Then it trains for a few
            epochs on the `spirals` data (notebook 4 explains the loop), and we count how
            many neurons picked each candidate.
            """
        ),
        code(
            r"""
            from smartmixed_np import MLP, Adam, clip_grad_norm, softmax_cross_entropy
            from smartmixed_np.data import load_dataset
            from smartmixed_np.gradcheck import check_model_gradients

            my_pool = list(DEFAULT_POOL) + ["softsign"]
            small = MLP([2, 6, 5, 3], "smartmixed", pool=my_pool, hard=False, dtype="float64", seed=0)
            xs, ys = rng.standard_normal((8, 2)), rng.integers(0, 3, size=8)
            print("whole network, soft mixture:", check_model_gradients(small, xs, ys))
            """
        ),
        code(
            r"""
            data = load_dataset("spirals", n_train=600 if QUICK else 2400)
            net = MLP([2, 32, 32, 3], "smartmixed", pool=my_pool, tau=0.3, seed=0)
            optimizer = Adam(net.parameters(), lr=1e-2)
            shuffle = np.random.default_rng(0)
            for epoch in range(1, (4 if QUICK else 30) + 1):
                for idx in np.array_split(shuffle.permutation(len(data.y_train)), len(data.y_train) // 64):
                    logits = net.forward(data.x_train[idx], train=True)                 # forward (Gumbel noise)
                    loss, dlogits = softmax_cross_entropy(logits, data.y_train[idx])
                    net.backward(dlogits)                                              # backward
                    clip_grad_norm(net.gradients(), 1.0)                               # update
                    optimizer.step(net.gradients())
            accuracy = float(np.mean(net.predict(data.x_val) == data.y_val))
            print(f"after {epoch} epochs: validation accuracy {accuracy:.3f}")
            for layer, shares in enumerate(net.choice_shares()):
                print(f"layer {layer + 1}:", ", ".join(f"{name} {share:.0%}" for name, share in shares.items()))
            """
        ),
        md(
            r"""
            Softsign is now one candidate among seven: whether neurons keep it is decided by
            the loss, like for the others. The registration lives in this Python process
            only; to train with it from the command line, put the two functions and the
            `register_activation` call in a module of your own and name that module with
            `--import` (the README shows how).

            **Summary.** Each candidate is a value and a derivative; the derivative is
            checked in vector-Jacobian form against central differences in float64; a
            relative error near $10^{-10}$ means correct, and anything above about
            $10^{-6}$ means look again. A candidate of your own is registered with
            `register_activation`, checked the same way, and then used by name. The next
            notebook applies the same check to a whole network, layer by layer.
            """
        ),
    ]


# =====================================================================================
# 02: backpropagation by hand
# =====================================================================================
def notebook_02() -> list:
    return [
        md(
            rf"""
            # 2. Backpropagation by hand through a small MLP

            A network's backward pass is the chain rule applied layer by layer, from the
            loss back to the first weights. In this notebook you will write it out for a
            small MLP with the library's pure functions:

            * `linear_forward` / `linear_backward` for $z = x W^\top + b$,
            * an activation's `forward` / `derivative`,
            * `softmax_cross_entropy`, which returns the loss *and* its gradient,

            verify each step against finite differences (`check_vjp`), compare the result
            with `MLP.backward`, take one update step, and see how a wrong gradient shows up
            in the relative error.

            {MODE_NOTE}
            """
        ),
        code(
            r"""
            import os

            import matplotlib.pyplot as plt
            import numpy as np

            from smartmixed_np import MLP, get_activation, softmax_cross_entropy
            from smartmixed_np.gradcheck import check_model_gradients, check_vjp, numerical_vjp, relative_error
            from smartmixed_np.linear import linear_backward, linear_forward

            QUICK_SETUP
            rng = np.random.default_rng(0)
            """
        ),
        md(
            r"""
            ## The network

            Three inputs, two hidden layers of 5 and 4 neurons, three classes:

            $$x \xrightarrow{W_0, b_0} z_1 \xrightarrow{\tanh} h_1 \xrightarrow{W_1, b_1} z_2
            \xrightarrow{\mathrm{elu}} h_2 \xrightarrow{W_2, b_2} s \xrightarrow{\text{softmax CE}} L$$

            We let `MLP` create and initialise it (in float64, for the checks) and then take
            its weights out, so that our hand-written passes and the library's use the very
            same numbers. Weights are stored as PyTorch stores them, `W: (out, in)`.
            """
        ),
        code(
            r"""
            B = 4
            model = MLP([3, 5, 4, 3], ["tanh", "elu"], dtype="float64", seed=0)
            x = rng.standard_normal((B, 3))
            labels = np.array([0, 2, 1, 2])

            params = model.parameters()
            W0, b0 = params["layers.0.weight"], params["layers.0.bias"]
            W1, b1 = params["layers.1.weight"], params["layers.1.bias"]
            W2, b2 = params["layers.2.weight"], params["layers.2.bias"]
            tanh, elu = get_activation("tanh"), get_activation("elu")
            for name, p in params.items():
                print(f"{name:<16} {p.shape}")
            """
        ),
        md(
            r"""
            ## Forward

            Each pure function returns its output and a *cache*: exactly what its backward
            will need (for a linear layer, its input `x` and `W`). Nothing is stored on an
            object, so re-running a cell can never leave a stale cache behind.
            """
        ),
        code(
            r"""
            # forward
            z1, cache1 = linear_forward(x, W0, b0)     # (B, 5)
            h1 = tanh.forward(z1)                     # (B, 5)
            z2, cache2 = linear_forward(h1, W1, b1)    # (B, 4)
            h2 = elu.forward(z2)                      # (B, 4)
            s, cache3 = linear_forward(h2, W2, b2)     # (B, 3) class scores (logits)
            loss, ds = softmax_cross_entropy(s, labels)
            print("loss:", float(loss))
            print("same logits as MLP.forward:", np.array_equal(s, model.forward(x)))
            """
        ),
        md(
            r"""
            ## Backward

            The loss gradient comes with the loss: for
            $L = -\frac1B \sum_b \log p_{b, y_b}$ with $p = \mathrm{softmax}(s)$,

            $$\frac{\partial L}{\partial s} = \frac{p - \mathrm{onehot}(y)}{B}.$$

            From there, every layer turns the gradient of its output into gradients of its
            input and parameters:

            * linear: $dx = dz\,W$, $dW = dz^\top x$, $db = \sum_b dz_b$;
            * activation: $dz = dh \odot f'(z)$ (elementwise: the Jacobian is diagonal).
            """
        ),
        code(
            r"""
            # backward
            dh2, dW2, db2 = linear_backward(ds, cache3)
            dz2 = dh2 * elu.derivative(z2, h2)
            dh1, dW1, db1 = linear_backward(dz2, cache2)
            dz1 = dh1 * tanh.derivative(z1, h1)
            _, dW0, db0 = linear_backward(dz1, cache1, need_dx=False)  # x is data: no dx needed
            by_hand = {"layers.0.weight": dW0, "layers.0.bias": db0, "layers.1.weight": dW1,
                       "layers.1.bias": db1, "layers.2.weight": dW2, "layers.2.bias": db2}
            for name, g in by_hand.items():
                print(f"d{name:<16} {g.shape}  norm {np.linalg.norm(g):.4f}")
            """
        ),
        md(
            r"""
            ## Verify each step on its own

            `check_vjp(fn, inputs, vjp)` draws a random upstream gradient $u$ of the shape
            of `fn`'s output, asks `vjp(u)` for the analytic $J^\top u$ (one gradient per
            input), and compares it with central differences. Checking each operation
            separately tells you *which* one is wrong if anything is.
            """
        ),
        code(
            r"""
            checks = {
                "softmax cross-entropy (ds)": check_vjp(
                    lambda s_: softmax_cross_entropy(s_, labels)[0], [s], lambda u: [u * ds]),
                "linear 3 (dh2, dW2, db2)": check_vjp(
                    lambda h, W, b: linear_forward(h, W, b)[0], [h2, W2, b2], lambda u: linear_backward(u, cache3)),
                "elu (dz2)": check_vjp(elu.forward, [z2], lambda u: [u * elu.derivative(z2, h2)]),
                "linear 2 (dh1, dW1, db1)": check_vjp(
                    lambda h, W, b: linear_forward(h, W, b)[0], [h1, W1, b1], lambda u: linear_backward(u, cache2)),
                "tanh (dz1)": check_vjp(tanh.forward, [z1], lambda u: [u * tanh.derivative(z1, h1)]),
            }
            for label, result in checks.items():
                print(f"{label:<28} max relative error {result.max_error:.1e}")
            """
        ),
        md(
            r"""
            The loss has a scalar output, so its "upstream gradient" is a random scalar and
            the VJP is just `u * ds`. (`elu` sees $z_2$ here, which might contain a value
            close to its kink at 0; `elu` has a continuous derivative with $\alpha = 1$, so
            even that would be harmless.)

            ## Verify the whole chain

            Now the composition: the loss as a function of all six parameter arrays at once.
            The numerical side perturbs one weight at a time and recomputes the whole
            forward pass, so it knows nothing about our backward code.
            """
        ),
        code(
            r"""
            def loss_of(W0_, b0_, W1_, b1_, W2_, b2_):
                h1_ = tanh.forward(linear_forward(x, W0_, b0_)[0])
                h2_ = elu.forward(linear_forward(h1_, W1_, b1_)[0])
                return softmax_cross_entropy(linear_forward(h2_, W2_, b2_)[0], labels)[0]

            inputs = [W0, b0, W1, b1, W2, b2]
            chain = check_vjp(loss_of, inputs, lambda u: [u * g for g in by_hand.values()])
            print(chain)
            """
        ),
        md(
            r"""
            ## Compare with `MLP.backward`

            The library's `MLP` runs the same pure functions in the same order. Its
            `forward` records a tape of caches, `backward` consumes it and writes every
            gradient into `model.gradients()`, under the same names as the parameters.
            """
        ),
        code(
            r"""
            logits = model.forward(x, train=True)
            _, dlogits = softmax_cross_entropy(logits, labels)
            model.backward(dlogits)
            for name, g in model.gradients().items():
                print(f"{name:<16} relative error vs by hand: {relative_error(g, by_hand[name]):.1e}")
            """
        ),
        md(
            r"""
            Identical (here to the last bit): the library runs the same computation. For a large network, checking every weight one by
            one is too slow (two forward passes per weight); `check_model_gradients` instead
            checks the gradient along one random direction $v$ over all parameters at once:
            $\frac{L(\theta + \epsilon v) - L(\theta - \epsilon v)}{2\epsilon} \approx \langle\nabla L, v\rangle$,
            two forward passes in total, whatever the size. It works on a private copy of
            the network; we hand it a freshly built one (same seed, so the same weights).
            """
        ),
        code(
            r"""
            fresh = MLP([3, 5, 4, 3], ["tanh", "elu"], dtype="float64", seed=0)
            print(check_model_gradients(fresh, x, labels))
            """
        ),
        md(
            r"""
            ## Update

            The gradient is the direction of steepest ascent, so a small step against it
            lowers the loss: to first order by $\eta \lVert\nabla L\rVert^2$. Plain gradient
            descent on our hand-computed gradients:
            """
        ),
        code(
            r"""
            # update: one step of gradient descent, on copies of the weights
            lr = 0.1
            stepped = [p - lr * g for p, g in zip(inputs, by_hand.values())]
            predicted_drop = lr * sum(float(np.sum(g * g)) for g in by_hand.values())
            new_loss = float(loss_of(*stepped))
            print(f"loss {float(loss):.6f} -> {new_loss:.6f}: dropped by {float(loss) - new_loss:.6f}, "
                  f"first-order prediction {predicted_drop:.6f}")
            """
        ),
        md(
            r"""
            ## What a wrong gradient looks like

            Three classic slips in the backward pass, each checked against the whole chain
            as above. The relative error measures how much of the gradient *vector* is wrong,
            so a bug that touches every entry scores near 1, and one that touches a few
            entries scores less, but still orders of magnitude above the $10^{-6}$ threshold.
            """
        ),
        code(
            r"""
            def backward_with(bug):
                ds_ = ds * B if bug == "loss gradient not divided by B" else ds
                dh2_, dW2_, db2_ = linear_backward(ds_, cache3)
                dz2_ = dh2_ if bug == "elu derivative left out" else dh2_ * elu.derivative(z2, h2)
                dh1_, dW1_, db1_ = linear_backward(dz2_, cache2)
                # tanh'(z) = 1 - tanh(z)^2 = 1 - h^2; passing z where h belongs is easy to do
                y_arg = z1 if bug == "tanh derivative at z instead of h" else h1
                dz1_ = dh1_ * tanh.derivative(z1, y_arg)
                _, dW0_, db0_ = linear_backward(dz1_, cache1, need_dx=False)
                return [dW0_, db0_, dW1_, db1_, dW2_, db2_]

            bugs = ["loss gradient not divided by B", "elu derivative left out", "tanh derivative at z instead of h"]
            print(f"{'relative error of':<34} " + "  ".join(f"{n:>5}" for n in ["dW0", "db0", "dW1", "db1", "dW2", "db2"]))
            for bug in bugs:
                grads = backward_with(bug)
                result = check_vjp(loss_of, inputs, lambda u: [u * g for g in grads], raise_on_failure=False)
                per_input = "  ".join(f"{result.errors[i]:.0e}" for i in range(len(inputs)))
                print(f"{bug:<34} {per_input}")
            """
        ),
        md(
            r"""
            The per-input errors also point at the culprit: the missing `1/B` spoils every
            gradient equally ($\frac{B-1}{B+1} = 0.6$ for $B = 4$); the missing ELU derivative
            leaves the last layer's gradients intact but spoils everything below it; the tanh
            slip only affects the first layer.

            Numerical gradients themselves also carry a small error, $O(\epsilon^2)$ from
            truncation plus rounding. Compare one numerical VJP with the analytic one at
            several steps: the agreement is best for $\epsilon$ around $10^{-4}$ to $10^{-6}$,
            and the library uses $10^{-6}$.
            """
        ),
        code(
            r"""
            u = np.array(1.0)
            for eps in (1e-2, 1e-4, 1e-6, 1e-8, 1e-10):
                numeric = numerical_vjp(loss_of, inputs, u, index=0, eps=eps)
                print(f"eps {eps:.0e}: relative error of dW0 {relative_error(dW0, numeric):.1e}")
            """
        ),
        md(
            r"""
            **Summary.** Backpropagation is a sequence of small vector-Jacobian products,
            each of which can be checked on its own against finite differences and then as
            a chain. `MLP.backward` is the same sequence; a correct gradient agrees to about
            $10^{-10}$, a wrong one is off by $10^{-3}$ to $1$. The next notebook turns to
            the part of a SmartMixed network that is *not* differentiable: choosing an
            activation.
            """
        ),
    ]


# =====================================================================================
# 03: Gumbel-softmax and the straight-through estimator
# =====================================================================================
def notebook_03() -> list:
    return [
        md(
            rf"""
            # 3. Gumbel-softmax and the straight-through gradient

            In phase 1 each hidden neuron owns selection logits $\alpha \in \mathbb{{R}}^K$,
            one per candidate activation, and *picks one candidate* at every training step.
            Picking is discrete, so it has no useful gradient. SmartMixed uses the hard
            Gumbel-softmax with a straight-through gradient to learn the logits anyway.

            In this notebook you will

            * sample with the **Gumbel-max trick** and check that the argmax frequencies
              match $\mathrm{{softmax}}(\alpha)$;
            * see what the **temperature** $\tau$ does to the soft weights;
            * see why the hard forward pass has zero true gradient with respect to the logits,
              and which function the **straight-through (ST) gradient** is the exact gradient
              of (and verify it with `check_vjp`);
            * **measure** the bias and the variance of the ST gradient as functions of $\tau$.

            {MODE_NOTE}
            """
        ),
        code(
            r"""
            import os

            import matplotlib.pyplot as plt
            import numpy as np

            from smartmixed_np import DEFAULT_POOL
            from smartmixed_np.activations import resolve_pool
            from smartmixed_np.backend import SeededRNG, get_backend
            from smartmixed_np.gradcheck import check_vjp
            from smartmixed_np.mixture import (candidate_outputs, gumbel_softmax_weights, mixture_backward,
                                               mixture_forward, softmax_backward, straight_through_surrogate)
            from smartmixed_np.plots import ACTIVATION_COLORS

            QUICK_SETUP
            pool = resolve_pool(DEFAULT_POOL)
            K = len(pool)
            cpu = get_backend("cpu")
            colors = [ACTIVATION_COLORS[a.name] for a in pool]
            """
        ),
        md(
            r"""
            ## The Gumbel-max trick

            If $g_1, \dots, g_K$ are independent standard Gumbel variables
            ($g = -\log(-\log u)$, $u \sim U(0,1)$), then

            $$\arg\max_k\,(\alpha_k + g_k) \;\sim\; \mathrm{Categorical}(p), \qquad p = \mathrm{softmax}(\alpha).$$

            So adding noise and taking the argmax *is* sampling from the softmax. The library
            draws all noise from seeded generators (`SeededRNG`), so a draw can be replayed.
            """
        ),
        code(
            r"""
            logits = np.array([0.5, -0.3, 0.2, 0.0, 0.4, -0.1])   # one neuron's alpha
            p = np.exp(logits) / np.exp(logits).sum()
            draws = 20_000 if QUICK else 200_000
            noise = SeededRNG(0).gumbel((draws, K), np.float64, cpu)
            counts = np.bincount(np.argmax(logits + noise, axis=1), minlength=K)
            freq = counts / draws
            stderr = np.sqrt(p * (1 - p) / draws)
            print("largest |frequency - p| in standard errors:", np.max(np.abs(freq - p) / stderr).round(2))

            fig, ax = plt.subplots(figsize=(7, 3.5))
            pos = np.arange(K)
            ax.bar(pos - 0.2, p, 0.4, color=colors, alpha=0.4)
            ax.bar(pos + 0.2, freq, 0.4, color=colors)
            ax.set_xticks(pos, [a.name for a in pool])
            ax.set(ylabel="probability", ylim=(0, 1.4 * p.max()),
                   title=f"left (pale): softmax(alpha); right: argmax frequency over {draws:,} draws")
            plt.show()
            """
        ),
        md(
            r"""
            ## The temperature

            The soft Gumbel-softmax weights replace the argmax by a softmax at temperature
            $\tau$:

            $$y = \mathrm{softmax}\big((\alpha + g)/\tau\big).$$

            The argmax of $y$ does not depend on $\tau$ (dividing by $\tau > 0$ keeps the
            order), but its shape does: a small $\tau$ makes $y$ nearly one-hot, a large one
            spreads it out towards uniform. Below, one and the same noise draw at four
            temperatures, and the average largest weight over many draws.
            """
        ),
        code(
            r"""
            one_draw = noise[:1]
            taus_shown = [0.1, 0.3, 1.0, 3.0]
            fig, axes = plt.subplots(1, len(taus_shown), figsize=(13, 2.8), sharey=True)
            for ax, tau in zip(axes, taus_shown):
                y = gumbel_softmax_weights(logits[None, :], one_draw, tau)[0]
                ax.bar(range(K), y, color=colors)
                ax.set_xticks(range(K), [a.name for a in pool], rotation=60, fontsize=8)
                ax.set_title(f"tau = {tau}")
            axes[0].set_ylabel("weight y")
            plt.tight_layout()
            plt.show()

            tau_grid = np.logspace(-2, 1, 13)
            sample = noise[:5000]
            mean_max = [gumbel_softmax_weights(logits[None, :], sample, t).max(axis=1).mean() for t in tau_grid]
            for t, m in zip(tau_grid[::3], mean_max[::3]):
                print(f"tau {t:6.2f}: mean largest weight {m:.3f}")
            """
        ),
        md(
            r"""
            As $\tau \to 0$ the weights approach the one-hot argmax; as $\tau \to \infty$ they
            approach $1/K \approx 0.167$ each. SmartMixed uses $\tau = 0.3$ (the value the
            published code passes).

            ## The hard forward pass and its (useless) true gradient

            In hard mode the neuron's output is exactly the selected candidate,
            $\mathrm{out} = a_s(z)$ with $s = \arg\max_k y_k$ and $a_k = \mathrm{clamp}(f_k(z))$.
            For fixed noise, $s$ only changes when the logits cross a boundary, so the output
            is a **step function** of $\alpha$: its derivative is zero almost everywhere and
            undefined at the jumps. Gradient descent on the true gradient would never move
            the logits.

            The **straight-through** estimator uses the one-hot in the forward pass and
            pretends, in the backward pass, that the soft weights $y$ were used:
            $h = \mathrm{onehot}(s) - \mathrm{sg}(y) + y$ (sg = stop-gradient). This is the
            exact gradient of the **surrogate**

            $$S(\alpha) = \sum_k \big(y_k(\alpha) + C_k\big)\, a_k(z), \qquad C = \mathrm{onehot}(s) - y(\alpha_0) \text{ held fixed},$$

            which equals the hard output at the current point $\alpha_0$ and is smooth.
            The plot sweeps the logit of the runner-up candidate of one neuron (noise fixed):
            the hard output stays flat, then jumps when the runner-up overtakes the selected
            candidate; the surrogate passes through the hard output at $\alpha_0$, and the ST
            gradient is its slope there. It "sees" the jump coming, which is exactly the
            information the true gradient (zero) does not carry.
            """
        ),
        code(
            r"""
            tau = 0.3
            z = np.array([[-1.0]])                       # one sample, one neuron: candidates differ a lot here
            alpha0 = logits[None, :].copy()
            g = SeededRNG(8).gumbel((1, K), np.float64, cpu)   # one fixed noise draw
            out0, cache0 = mixture_forward(z, alpha0, g, pool, tau=tau)
            offset = np.eye(K)[cache0.selected] - cache0.weights   # C = onehot(s) - y, held fixed
            _, dalpha = mixture_backward(np.ones_like(out0), cache0, pool)   # d out / d alpha (ST)
            s, j = np.argsort(cache0.weights[0])[[-1, -2]]           # selected and runner-up
            print(f"selected: {pool[s].name} (y = {cache0.weights[0, s]:.2f}), runner-up: {pool[j].name} "
                  f"(y = {cache0.weights[0, j]:.2f}); ST gradient d out / d alpha_{pool[j].name} = {dalpha[0, j]:.3f}")

            sweep = np.linspace(alpha0[0, j] - 1.5, alpha0[0, j] + 1.5, 601)
            hard, surrogate = [], []
            for value in sweep:
                a = alpha0.copy(); a[0, j] = value
                hard.append(mixture_forward(z, a, g, pool, tau=tau)[0][0, 0])
                surrogate.append(straight_through_surrogate(z, a, g, pool, tau=tau, offset=offset)[0, 0])

            fig, ax = plt.subplots(figsize=(7, 4))
            ax.plot(sweep, hard, lw=2.5, label="hard output $a_s(z)$ (the true function)")
            ax.plot(sweep, surrogate, "--", label=r"surrogate $S(\alpha)$, C fixed at $\alpha_0$")
            ax.plot(sweep, out0[0, 0] + dalpha[0, j] * (sweep - alpha0[0, j]), ":", color="k",
                    label="slope = ST gradient")
            ax.plot([alpha0[0, j]], [out0[0, 0]], "ko", label=r"current point $\alpha_0$")
            ax.set(xlabel=f"logit of {pool[j].name} (the runner-up)", ylabel="neuron output",
                   ylim=(-1.2, 0.5), title=f"one neuron, z = -1, tau = {tau}, noise fixed")
            ax.legend(fontsize=8, loc="lower left")
            plt.show()
            """
        ),
        md(
            r"""
            ## Verifying the straight-through gradient

            Because the ST gradient is the exact gradient of the surrogate, finite
            differences of the surrogate, with the noise and the offset $C$ held fixed, are
            the ground truth for `mixture_backward`. A layer of 5 neurons on a batch of 4,
            checked with respect to both $z$ and the logits (the $z$ values are kept away from
            the kinks at 0):
            """
        ),
        code(
            r"""
            rng = np.random.default_rng(0)
            zb = rng.choice([-1.0, 1.0], size=(4, 5)) * rng.uniform(0.1, 3.0, size=(4, 5))
            alpha = rng.standard_normal((5, K))
            gb = SeededRNG(1).gumbel((5, K), np.float64, cpu)        # shared noise: one draw per forward
            out, cache = mixture_forward(zb, alpha, gb, pool, tau=tau)
            C = np.eye(K)[cache.selected] - cache.weights

            def surrogate(z_, alpha_):
                return straight_through_surrogate(z_, alpha_, gb, pool, tau=tau, offset=C)

            print("surrogate == hard forward at the point:", np.allclose(surrogate(zb, alpha), out, rtol=0, atol=1e-12))
            print("ST gradient vs surrogate:", check_vjp(surrogate, [zb, alpha], lambda u: mixture_backward(u, cache, pool)))
            """
        ),
        md(
            r"""
            And the same check against the hard forward itself fails, as it must: its finite
            differences with respect to the logits are exactly zero (no small step flips a
            selection), so the relative error is 1. With respect to $z$ the hard forward *is*
            differentiable (the selection does not depend on $z$), and that part passes.
            """
        ),
        code(
            r"""
            def hard_forward(z_, alpha_):
                return mixture_forward(z_, alpha_, gb, pool, tau=tau)[0]

            print(check_vjp(hard_forward, [zb, alpha], lambda u: mixture_backward(u, cache, pool), raise_on_failure=False))
            """
        ),
        md(
            r"""
            ## Bias and variance of the ST gradient, measured

            The ST gradient is a random variable (it depends on the noise). What it should
            estimate is the gradient of the **expected** output. Because
            $\arg\max_k(\alpha_k + g_k)$ is a sample from $\mathrm{Categorical}(p)$ with
            $p = \mathrm{softmax}(\alpha)$, that expectation has a closed form, for any loss
            $\ell$ of the neuron's output:

            $$\mathbb{E}_g[\ell] = \sum_k p_k\, \ell_k, \qquad
              \frac{\partial\,\mathbb{E}_g[\ell]}{\partial\alpha} = p \odot \big(\ell - \langle p, \ell\rangle\big),$$

            where $\ell_k$ is the loss when candidate $k$ is selected. Note that it does not
            depend on $\tau$. We take one neuron with fixed inputs $z$ (a batch of 8 values)
            and fixed logits, and two losses of its output:

            * **linear**: $\ell = \langle u, \mathrm{out}\rangle$ for a fixed random $u$: the
              gradient of the expected output $\mathbb{E}_g[\mathrm{out}] = \sum_k p_k a_k$,
              contracted with $u$ (this is what one layer sees when the gradient arriving
              from above does not depend on the choice);
            * **nonlinear**: $\ell = \sum_b e^{\mathrm{out}_b}$: now the upstream gradient
              $e^{\mathrm{out}}$ depends on which candidate was picked, as it does in a real
              network.

            First, the closed form itself is checked against finite differences:
            """
        ),
        code(
            r"""
            z8 = np.linspace(-2, 2, 8)[:, None]                  # (B=8, N=1)
            alpha1 = logits[None, :]                             # (N=1, K)
            u = np.random.default_rng(1).standard_normal((8, 1))
            a_k = candidate_outputs(z8, pool, 10.0)[:, :, 0]     # (K, B): every candidate's output
            losses = {"linear": lambda out: np.sum(u * out, axis=0),   # per neuron column
                      "nonlinear": lambda out: np.sum(np.exp(out), axis=0)}
            upstream = {"linear": lambda out: np.broadcast_to(u, out.shape), "nonlinear": np.exp}

            def expected_loss(alpha_, loss):
                p_ = np.exp(alpha_ - alpha_.max()) / np.exp(alpha_ - alpha_.max()).sum()
                return np.array([p_[0] @ loss(a_k.T)])            # sum_k p_k * loss_k

            true_grad = {}
            for name, loss in losses.items():
                l_k = loss(a_k.T)                                 # (K,): loss when k is selected
                true_grad[name] = (p * (l_k - p @ l_k))[None, :]
                print(name, check_vjp(lambda a_: expected_loss(a_, loss), [alpha1], lambda w: [w * true_grad[name]]))
            """
        ),
        md(
            r"""
            Now the ST gradient for many noise draws. A trick makes this one vectorised call
            of the library's own `mixture_forward`/`mixture_backward`: $M$ copies of the neuron
            side by side form a layer of width $M$, and the shared-noise mode gives each copy
            its own noise row, so `mixture_backward` returns $M$ independent ST gradients
            (one row of `dlogits` per copy). For each $\tau$ we report

            * the **relative bias** $\lVert\mathbb{E}[\hat g] - \nabla\rVert / \lVert\nabla\rVert$
              (with its Monte-Carlo standard error), and
            * the **relative variance** $\mathbb{E}\lVert\hat g - \mathbb{E}\hat g\rVert^2 / \lVert\nabla\rVert^2$.
            """
        ),
        code(
            r"""
            def st_gradients(tau, draws, loss_name, seed, chunk=20_000):
                noise_rng = SeededRNG(seed)
                rows = []
                for start in range(0, draws, chunk):
                    m = min(chunk, draws - start)
                    zz = np.repeat(z8, m, axis=1)                 # (8, m): m copies of the neuron
                    out, cache = mixture_forward(zz, np.repeat(alpha1, m, axis=0),
                                                 noise_rng.gumbel((m, K), np.float64, cpu), pool, tau=tau)
                    _, dalpha = mixture_backward(upstream[loss_name](out), cache, pool)
                    rows.append(dalpha)                           # (m, K): one ST gradient per draw
                return np.concatenate(rows)
            """
        ),
        code(
            r"""
            taus = np.array([0.05, 0.1, 0.3, 1.0, 3.0]) if QUICK else np.array([0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0])
            draws = 20_000 if QUICK else 200_000
            stats = {}
            for name in losses:
                ref = true_grad[name][0]
                rows = []
                for tau in taus:
                    g_hat = st_gradients(tau, draws, name, seed=7)
                    mean = g_hat.mean(axis=0)
                    var = np.mean(np.sum((g_hat - mean) ** 2, axis=1))
                    norm2 = np.sum(ref ** 2)
                    cosine = mean @ ref / np.linalg.norm(mean) / np.sqrt(norm2)
                    rows.append((np.linalg.norm(mean - ref) / np.sqrt(norm2), np.sqrt(var / draws / norm2), var / norm2, cosine))
                stats[name] = np.array(rows)
            for name, table in stats.items():
                print(f"{name} loss, {draws:,} draws per tau")
                print(f"  {'tau':>5}  {'rel. bias':>9}  {'(s.e.)':>7}  {'rel. variance':>13}  {'cos(E[ST], true)':>16}")
                for tau, (bias, se, var, cosine) in zip(taus, table):
                    print(f"  {tau:5.2f}  {bias:9.3f}  {se:7.3f}  {var:13.3f}  {cosine:16.4f}")
            """
        ),
        code(
            r"""
            fig, (ax_b, ax_v) = plt.subplots(1, 2, figsize=(11, 4))
            for name, style in (("linear", "o-"), ("nonlinear", "s--")):
                bias, se, var, _ = stats[name].T
                ax_b.errorbar(taus, bias, yerr=2 * se, fmt=style, capsize=3, label=f"{name} loss")
                ax_v.loglog(taus, var, style, label=f"{name} loss")
            ax_v.loglog(taus, 1 / taus, color="0.6", lw=1, label=r"$1/\tau$ (reference slope)")
            for ax in (ax_b, ax_v):
                ax.axvline(0.3, color="0.5", ls=":", lw=1)
                ax.set_xscale("log")
                ax.set_xlabel(r"temperature $\tau$ (dotted: 0.3, the default)")
                ax.grid(alpha=0.3, which="both")
                ax.legend()
            ax_b.set(ylabel="relative bias (error bars: 2 s.e.)", title="bias of the ST gradient")
            ax_v.set(ylabel="relative variance", title="variance of the ST gradient (one draw)")
            plt.tight_layout()
            plt.show()
            """
        ),
        md(
            r"""
            What the measurement shows:

            * **Bias grows with $\tau$.** At large $\tau$ the soft weights are nearly uniform,
              so the ST gradient $\mathrm{softmax\_backward}(\cdot, y)/\tau$ shrinks towards
              zero and misses most of the true gradient (the relative bias tends to 1).
            * **For the linear loss the bias vanishes as $\tau \to 0$.** With an upstream
              gradient that does not depend on the choice, $\mathbb{E}[\hat g]$ is exactly the
              gradient of $\mathbb{E}_g[\langle u, \sum_k y_k a_k\rangle]$, the expected *soft*
              output, and $\mathbb{E}[y] \to p$ as $\tau \to 0$. (The measured values at small
              $\tau$ are about one standard error: the norm of a Monte-Carlo mean cannot come
              out below its own noise.)
            * **For the nonlinear loss a bias remains at small $\tau$** (several percent here,
              well outside the error bars): the upstream gradient is taken at the *selected*
              candidate, a first-order guess at what the other candidates would give. No
              temperature removes that.
            * **Variance grows like $1/\tau$** as $\tau \to 0$: the softmax becomes a near step
              and its rare non-flat draws carry huge slopes.

            So $\tau$ trades bias against variance; around $\tau = 0.3$ both are moderate
            (a few percent of bias, a variance a few times the squared gradient for a single
            draw, averaged down over many steps). The ST gradient is not unbiased, but its
            expectation points almost exactly along the true gradient (the cosine column: the
            bias is mostly in the length, which a learning rate absorbs, not in the direction),
            so it is a useful direction to descend. The next notebook shows the logits
            learning with it.
            """
        ),
    ]


# =====================================================================================
# 04: SmartMixed end to end
# =====================================================================================
def notebook_04() -> list:
    return [
        md(
            rf"""
            # 4. SmartMixed end to end: learn the activations, freeze, train on

            This notebook trains SmartMixed networks from start to finish, first on `spirals`
            (two inputs, so you can *see* what the network computes) and then on
            `synth-digits` (generated 28x28 digit-like glyphs).

            You will

            * write the **phase-1** training loop yourself: forward with fresh Gumbel noise,
              backward (straight-through gradients for the selection logits), gradient
              clipping, Adam;
            * watch the **share of each activation** in each layer evolve as the logits learn;
            * **freeze** each neuron's argmax choice and check that freezing keeps the function;
            * train **phase 2** as a fixed mixed network and compare decision boundaries
              before and after;
            * run the same two phases with the library's `train()` on `synth-digits` and read
              the figures it writes.

            {MODE_NOTE}
            """
        ),
        code(
            r"""
            import os
            import tempfile

            import matplotlib.pyplot as plt
            import numpy as np
            from IPython.display import Image, display
            from matplotlib.colors import ListedColormap

            from smartmixed_np import DEFAULT_POOL, MLP, Adam, clip_grad_norm, softmax_cross_entropy
            from smartmixed_np.data import load_dataset
            from smartmixed_np.plots import ACTIVATION_COLORS, model_color
            from smartmixed_np.train import TrainConfig, evaluate, train

            QUICK_SETUP
            CLASS_COLORS = ListedColormap(["#4477aa", "#ee6677", "#228833"])
            """
        ),
        md(
            r"""
            ## The data: three interleaved spirals

            Each class is one arm of a spiral; telling them apart needs a curved boundary that
            winds around the origin, which a linear model cannot draw.
            """
        ),
        code(
            r"""
            data = load_dataset("spirals", n_train=600 if QUICK else 2400)
            print(data)
            fig, ax = plt.subplots(figsize=(4.2, 4.2))
            ax.scatter(*data.x_train.T, c=data.y_train, cmap=CLASS_COLORS, s=5)
            ax.set(title="spirals: training set", aspect="equal")
            plt.show()
            """
        ),
        md(
            r"""
            ## The network

            `MLP([2, H, H, 3], "smartmixed")`: two hidden layers of $H$ neurons, each neuron with
            six selection logits. The logits start at zero with a tiny bump (0.001) on one
            random candidate per neuron, so the untrained network's argmax choices are spread
            over the pool instead of all being the first candidate.
            """
        ),
        code(
            r"""
            H = 32 if QUICK else 64
            model = MLP([2, H, H, 3], "smartmixed", tau=0.3, seed=0)
            for name, p in model.parameters().items():
                print(f"{name:<22} {p.shape}")
            print("initial shares, layer 1:", {k: round(v, 2) for k, v in model.choice_shares()[0].items()})
            """
        ),
        md(
            r"""
            To draw decision boundaries we evaluate the network on a grid. In evaluation mode
            a phase-1 network uses each neuron's argmax choice, without noise.
            """
        ),
        code(
            r"""
            GRID = 60 if QUICK else 250
            gx, gy = np.meshgrid(np.linspace(-1.3, 1.3, GRID), np.linspace(-1.3, 1.3, GRID))
            grid = np.column_stack([gx.ravel(), gy.ravel()]).astype(np.float32)

            def snapshot(net):
                # predicted class on the grid, and the test accuracy
                return net.predict(grid).reshape(gx.shape), evaluate(net, data.x_test, data.y_test)["accuracy"]

            snapshots = {"untrained": snapshot(model)}
            """
        ),
        md(
            r"""
            ## Phase 1: learning which activation each neuron uses

            One epoch is a pass over the shuffled training set in mini-batches. Every step:

            1. **forward** in training mode: each phase-1 layer draws fresh Gumbel noise (one
               draw per layer, shared by the batch), and each neuron applies the candidate its
               noisy logits select;
            2. **loss** and its gradient (`softmax_cross_entropy`);
            3. **backward**: ordinary gradients for the weights, straight-through gradients for
               the selection logits;
            4. **update**: clip the global gradient norm to 1 (as the paper does), one Adam step
               on all parameters, logits included.
            """
        ),
        code(
            r"""
            EPOCHS_1 = 8 if QUICK else 60
            EPOCHS_2 = 8 if QUICK else 60
            BATCH, LR, CLIP = 64, 1e-2, 1.0
            shuffle = np.random.default_rng(0)

            def train_one_epoch(net, optimizer):
                n = len(data.y_train)
                order = shuffle.permutation(n)
                for start in range(0, n, BATCH):
                    idx = order[start:start + BATCH]
                    # forward (training mode: Gumbel noise in phase 1)
                    logits = net.forward(data.x_train[idx], train=True)
                    loss, dlogits = softmax_cross_entropy(logits, data.y_train[idx])
                    # backward
                    net.backward(dlogits)
                    # update
                    clip_grad_norm(net.gradients(), CLIP)
                    optimizer.step(net.gradients())
            """
        ),
        code(
            r"""
            optimizer = Adam(model.parameters(), lr=LR)
            history = []
            for epoch in range(1, EPOCHS_1 + 1):
                train_one_epoch(model, optimizer)
                val = evaluate(model, data.x_val, data.y_val)
                history.append({"epoch": epoch, "phase": 1, "val_acc": val["accuracy"], "shares": model.choice_shares()})
                if epoch % max(1, EPOCHS_1 // 6) == 0 or epoch == EPOCHS_1:
                    top = [max(layer, key=layer.get) for layer in model.choice_shares()]
                    print(f"epoch {epoch:3d}  validation accuracy {val['accuracy']:.3f}  most chosen per layer: {top}")
            snapshots["end of phase 1"] = snapshot(model)
            """
        ),
        md(
            r"""
            ### How the choices evolve

            The share of each activation among a layer's neurons, after every epoch of phase 1
            (from the argmax of the logits, i.e. what freezing would keep at that moment):
            """
        ),
        code(
            r"""
            epochs = [row["epoch"] for row in history]
            fig, axes = plt.subplots(1, model.num_hidden, figsize=(11, 3.6), sharey=True)
            for layer, ax in enumerate(axes):
                for name in DEFAULT_POOL:
                    ax.plot(epochs, [row["shares"][layer][name] for row in history],
                            color=ACTIVATION_COLORS[name], label=name, lw=2)
                ax.set(title=f"hidden layer {layer + 1} ({H} neurons)", xlabel="phase-1 epoch")
                ax.grid(alpha=0.3)
            axes[0].set_ylabel("share of neurons")
            axes[-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
            plt.tight_layout()
            plt.show()
            """
        ),
        md(
            r"""
            ## Freezing

            `model.freeze()` builds the phase-2 network: every neuron keeps its argmax choice,
            the weights are copied, the logits are dropped. With `contiguous=True` (the default)
            the neurons of each layer are also reordered so that each activation's neurons sit
            side by side (notebook 5 explains why and shows the permutation). Because a
            phase-1 network in evaluation mode already uses exactly the argmax choices, the
            frozen network computes the same function:
            """
        ),
        code(
            r"""
            phase2 = model.freeze(contiguous=True)
            before, after = model.forward(data.x_val), phase2.forward(data.x_val)
            print("largest logit difference, phase-1 (eval) vs frozen:", float(np.abs(before - after).max()))
            print("same predictions:", np.array_equal(before.argmax(1), after.argmax(1)))
            print("parameters:", sorted(model.parameters()), "->", sorted(phase2.parameters()))
            """
        ),
        md(
            r"""
            The tiny difference is float32 rounding: the reordered neurons are summed in a
            different order by the next layer's matrix product.

            ## Phase 2: training the fixed mixed network

            The same loop, on the frozen network, with a fresh Adam (the set of parameters has
            changed, and the moments of the phase-1 run belong to a different problem). There
            is no noise any more: training mode and evaluation mode compute the same thing.
            """
        ),
        code(
            r"""
            optimizer2 = Adam(phase2.parameters(), lr=LR)
            for epoch in range(EPOCHS_1 + 1, EPOCHS_1 + EPOCHS_2 + 1):
                train_one_epoch(phase2, optimizer2)
                val = evaluate(phase2, data.x_val, data.y_val)
                history.append({"epoch": epoch, "phase": 2, "val_acc": val["accuracy"]})
            print(f"validation accuracy after phase 2: {history[-1]['val_acc']:.3f}")
            snapshots["end of phase 2"] = snapshot(phase2)
            """
        ),
        code(
            r"""
            fig, ax = plt.subplots(figsize=(7, 3.5))
            ax.plot([r["epoch"] for r in history], [r["val_acc"] for r in history], lw=2, color=model_color("SmartMixed"))
            ax.axvline(EPOCHS_1 + 0.5, color="0.4", ls="--", label="freeze: phase 2 starts")
            ax.set(xlabel="epoch", ylabel="validation accuracy", title="spirals, SmartMixed")
            ax.grid(alpha=0.3)
            ax.legend(loc="lower right")
            plt.show()
            """
        ),
        md(
            r"""
            ## Decision boundaries

            The class each point of the plane is assigned to, with the test points on top:
            untrained, at the freeze (the end of phase 1; by the check above this is also the
            frozen network before phase 2), and after phase 2.
            """
        ),
        code(
            r"""
            fig, axes = plt.subplots(1, len(snapshots), figsize=(13, 4.4))
            for ax, (label, (regions, accuracy)) in zip(axes, snapshots.items()):
                ax.contourf(gx, gy, regions, levels=[-0.5, 0.5, 1.5, 2.5], cmap=CLASS_COLORS, alpha=0.35)
                ax.scatter(*data.x_test.T, c=data.y_test, cmap=CLASS_COLORS, s=3)
                ax.set(title=f"{label}\ntest accuracy {accuracy:.3f}", aspect="equal", xticks=[], yticks=[])
            plt.tight_layout()
            plt.show()
            """
        ),
        md(
            r"""
            ## Which activations did the layers prefer?

            The final choices per layer (in phase 2 they no longer change):
            """
        ),
        code(
            r"""
            def plot_shares(shares, title):
                fig, ax = plt.subplots(figsize=(8, 0.7 + 0.55 * len(shares)))
                for layer, layer_shares in enumerate(shares):
                    left = 0.0
                    for name in DEFAULT_POOL:
                        width = layer_shares.get(name, 0.0)
                        if width > 0:
                            ax.barh(layer, width, left=left, color=ACTIVATION_COLORS[name], edgecolor="white",
                                    label=name if layer == 0 else None)
                            if width >= 0.06:
                                ax.text(left + width / 2, layer, f"{width:.0%}", ha="center", va="center", fontsize=8, color="white")
                            left += width
                ax.set_yticks(range(len(shares)), [f"layer {i + 1}" for i in range(len(shares))])
                ax.invert_yaxis()
                ax.set(xlim=(0, 1), xlabel="share of neurons", title=title)
                handles, labels = ax.get_legend_handles_labels()
                ax.legend(handles, labels, ncol=6, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.35 if len(shares) < 3 else -0.25))
                plt.show()

            plot_shares(phase2.choice_shares(), "spirals: activation chosen per neuron, by layer")
            for layer, shares in enumerate(phase2.choice_shares()):
                print(f"layer {layer + 1}:", ", ".join(f"{k} {v:.0%}" for k, v in sorted(shares.items(), key=lambda kv: -kv[1])))
            """
        ),
        md(
            r"""
            Which candidates win depends on the data, the width, the seed and the learning
            rate; what matters is that the choice is *learned* from the loss, per neuron, and
            that mixed layers are the rule, not the exception.

            ## The same with `train()`, on synth-digits

            `smartmixed_np.train.train` runs both phases with the published protocol: a
            validation split, the best phase-1 weights (lowest validation loss) carried into
            phase 2, the best phase-2 model kept and scored on the test set. It writes a run
            folder with the history, metrics and figures; here it goes into a scratch folder
            that becomes the working directory, so the path it prints is a short relative one.
            """
        ),
        code(
            r"""
            digits = load_dataset("synth-digits", n_train=20, n_val=0, n_test=0)
            fig, axes = plt.subplots(2, 10, figsize=(10, 2.3))
            for ax, image, label in zip(axes.ravel(), digits.x_train, digits.y_train):
                ax.imshow(image.reshape(28, 28), cmap="gray_r")
                ax.set_title(str(label), fontsize=8)
                ax.axis("off")
            plt.show()
            """
        ),
        code(
            r"""
            os.chdir(tempfile.mkdtemp(prefix="smartmixed-"))   # scratch working directory for the run folder
            config = TrainConfig(
                dataset="synth-digits",
                train_limit=1500 if QUICK else None,      # default: 12,000 training images
                hidden=(64, 32) if QUICK else (256, 128),
                epochs=3 if QUICK else 12,
                transition_epoch=2 if QUICK else 4,       # phase 1: epochs 1..4; phase 2: the rest
                lr=1e-3,
                seed=0,
                out="synth-digits-smartmixed",            # relative: inside the scratch folder
                progress=False,
            )
            result = train(config)
            """
        ),
        code(
            r"""
            metrics = result.metrics
            print(f"phase-1 model (epoch {metrics['phase1']['epoch']}): test accuracy {metrics['phase1']['test_accuracy']:.4f}")
            print(f"final model (phase {metrics['selected']['phase']}, epoch {metrics['selected']['epoch']}): "
                  f"test accuracy {metrics['test']['accuracy']:.4f}")
            figures = result.run_dir / "figures"
            print("run folder:", sorted(p.name for p in result.run_dir.iterdir()))
            display(Image(filename=str(figures / "curves.png"), width=720))
            """
        ),
        code(
            r"""
            display(Image(filename=str(figures / "share_evolution.png"), width=720))
            display(Image(filename=str(figures / "activation_shares.png"), width=620))
            """
        ),
        md(
            r"""
            **Summary.** Phase 1 is an ordinary training loop in which the forward pass
            samples an activation per neuron and the backward pass gives the logits a
            straight-through gradient; the argmax choices move most in the first epochs and
            drift more slowly afterwards. Freezing
            keeps the function and drops the logits; phase 2 then trains a plain network whose
            neurons happen to use different activations. Notebook 5 shows how phase 2 is made
            as fast as a uniform network.
            """
        ),
    ]


# =====================================================================================
# 05: phase 2, fast
# =====================================================================================
def notebook_05() -> list:
    return [
        md(
            rf"""
            # 5. Phase 2, fast: masked groups vs contiguous groups

            After freezing, neuron $n$ of a layer applies its own activation $f_{{c_n}}$. Looping
            over neurons in Python would be hopelessly slow; instead the neurons are split into
            one **group** per activation, and each activation runs once, vectorised, over its
            group. There are two ways to address a group:

            * **masked**: the group is an index array; the forward pass gathers
              `z[:, idx]`, applies $f$, and scatters the result back (copies, every step);
            * **contiguous**: the neurons are *reordered* once, at freezing time, so that each
              group is a slice `z[:, start:stop]` (views, no copies).

            You will see the groups, the **function-preserving permutation** of the weights that
            makes the contiguous layout possible (rows of $W_i$, entries of $b_i$ and columns of
            $W_{{i+1}}$ permuted together), and **timings** measured here: a uniform ReLU network
            against the masked and the contiguous phase-2 networks.

            {MODE_NOTE}
            """
        ),
        code(
            r"""
            import os
            import time

            import matplotlib.pyplot as plt
            import numpy as np

            from smartmixed_np import DEFAULT_POOL, MLP, softmax_cross_entropy
            from smartmixed_np.activations import resolve_pool
            from smartmixed_np.backend import get_backend
            from smartmixed_np.fixed import contiguous_order, fixed_backward, fixed_forward, make_groups
            from smartmixed_np.plots import ACTIVATION_COLORS

            QUICK_SETUP
            pool = resolve_pool(DEFAULT_POOL)
            cpu = get_backend("cpu")
            rng = np.random.default_rng(0)
            """
        ),
        md(
            r"""
            ## Groups

            A layer of ten neurons with frozen choices (indices into the pool). `make_groups`
            builds one group per activation present; in masked mode each group holds the
            indices of its neurons:
            """
        ),
        code(
            r"""
            choices = np.array([2, 0, 5, 0, 1, 2, 0, 3, 5, 2])
            print("choices:", [pool[c].name for c in choices])
            for group in make_groups(choices, pool, cpu, contiguous=False, clamp=10.0):
                print(f"  masked     {group.activation.name:<11} columns {group.columns}")
            """
        ),
        md(
            r"""
            `contiguous_order` is the stable sort of the neurons by choice. After reordering,
            each group is a slice:
            """
        ),
        code(
            r"""
            order = contiguous_order(choices)
            print("order (original index of each new position):", order)
            print("sorted choices:", choices[order])
            for group in make_groups(choices[order], pool, cpu, contiguous=True, clamp=10.0):
                print(f"  contiguous {group.activation.name:<11} columns {group.columns}")
            """
        ),
        md(
            r"""
            Both layouts compute the same activations, up to the order of the columns:
            """
        ),
        code(
            r"""
            z = rng.standard_normal((4, 10))
            a_masked, _ = fixed_forward(z, make_groups(choices, pool, cpu, contiguous=False, clamp=10.0))
            a_contig, _ = fixed_forward(z[:, order], make_groups(choices[order], pool, cpu, contiguous=True, clamp=10.0))
            print("a_masked[:, order] == a_contig:", np.array_equal(a_masked[:, order], a_contig))
            """
        ),
        md(
            r"""
            ## The permutation that leaves the network's function unchanged

            Hidden neurons have no inherent order. If $P$ is a permutation matrix, then
            $P^\top P = I$, and an elementwise activation commutes with permutation, so

            $$W_{i+1}\, f(W_i x + b_i) = (W_{i+1} P^\top)\, f\big((P W_i) x + P b_i\big)$$

            with each neuron keeping its own activation. In words: permute the **rows** of $W_i$
            and the entries of $b_i$ (the neuron's incoming weights) and the **columns** of
            $W_{i+1}$ (its outgoing weights) with the same permutation. `MLP.freeze(contiguous=True)`
            does exactly this, layer by layer. A small network to look at:
            """
        ),
        code(
            r"""
            small = MLP([5, 8, 6, 3], "smartmixed", dtype="float64", seed=1)
            masked = small.freeze(contiguous=False)      # original neuron order, index groups
            contig = small.freeze(contiguous=True)       # sorted by activation, slice groups
            order1, order2 = (act.order for act in contig.activations)
            print("layer 1 order:", order1, " layer 2 order:", order2)

            W0, b0, W1 = masked.linears[0].W, masked.linears[0].b, masked.linears[1].W
            print("rows of W0 permuted:          ", np.array_equal(contig.linears[0].W, W0[order1]))
            print("entries of b0 permuted:       ", np.array_equal(contig.linears[0].b, b0[order1]))
            print("W1: rows by layer 2, columns by layer 1:", np.array_equal(contig.linears[1].W, W1[order2][:, order1]))
            print("W2: columns by layer 2:       ", np.array_equal(contig.linears[2].W, masked.linears[2].W[:, order2]))
            """
        ),
        md(
            r"""
            The matrix $W_1$ connects the two hidden layers, so it is permuted on both sides.
            Its columns are layer-1 neurons, its rows layer-2 neurons; the tick labels carry
            each neuron's activation. After the permutation the activations form blocks, and
            every weight has moved together with its two neurons:
            """
        ),
        code(
            r"""
            names1 = masked.choice_names()[0]
            names2 = masked.choice_names()[1]

            def show(ax, matrix, rows, cols, title):
                ax.imshow(matrix, cmap="RdBu", vmin=-0.5, vmax=0.5)
                ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=8)
                ax.set_yticks(range(len(rows)), rows, fontsize=8)
                for label, name in zip(ax.get_xticklabels(), cols):
                    label.set_color(ACTIVATION_COLORS[name])
                for label, name in zip(ax.get_yticklabels(), rows):
                    label.set_color(ACTIVATION_COLORS[name])
                ax.set_title(title, fontsize=10)

            fig, (ax_m, ax_c) = plt.subplots(1, 2, figsize=(10, 4.2))
            show(ax_m, W1, names2, names1, "$W_1$, original order (masked)")
            show(ax_c, contig.linears[1].W, [names2[i] for i in order2], [names1[i] for i in order1],
                 "$W_1$, sorted by activation (contiguous)")
            plt.tight_layout()
            plt.show()
            """
        ),
        md(
            r"""
            Same function, same gradients (permuted the same way). Forward and backward on a
            batch, in float64:
            """
        ),
        code(
            r"""
            x = rng.standard_normal((16, 5))
            labels = rng.integers(0, 3, 16)
            grads = {}
            for name, net in (("masked", masked), ("contiguous", contig)):
                logits = net.forward(x, train=True)                   # forward
                _, dlogits = softmax_cross_entropy(logits, labels)
                net.backward(dlogits)                                # backward
                grads[name] = (logits, net.gradients()["layers.0.weight"].copy())
            print("largest logit difference:", np.abs(grads["masked"][0] - grads["contiguous"][0]).max())
            print("largest dW0 difference (rows permuted):", np.abs(grads["masked"][1][order1] - grads["contiguous"][1]).max())
            """
        ),
        md(
            r"""
            The differences are rounding only: the next layer adds the same products in a
            different order.

            ## Timings

            Now the cost. A realistic size, the paper's architecture 2 on MNIST-shaped input:
            784-512-256-128-10 with a batch of 128 (smaller in quick mode). Four networks with the
            same weights:

            * **uniform ReLU**, a plain network: the reference cost;
            * **phase 2, masked** and **phase 2, contiguous**, frozen from a phase-1 network whose
              choices are spread evenly over the six candidates (the initial state: the harder
              case for grouping);
            * **phase 1** (training mode, all six candidates evaluated per neuron, for context).

            One step is forward + loss + backward (no optimizer update). The networks take turns
            in every round, so a slow moment of the machine hits all of them alike, and we report
            the median over the rounds.
            """
        ),
        code(
            r"""
            SIZES = [784, 128, 64, 32, 10] if QUICK else [784, 512, 256, 128, 10]
            BATCH = 64 if QUICK else 128
            ROUNDS = 5 if QUICK else 60

            x = rng.random((BATCH, SIZES[0]), dtype=np.float32)
            labels = rng.integers(0, 10, BATCH)
            phase1 = MLP(SIZES, "smartmixed", seed=0)
            nets = {
                "uniform ReLU": (MLP(SIZES, "relu", seed=0), False),
                "phase 2, masked": (phase1.freeze(contiguous=False), False),
                "phase 2, contiguous": (phase1.freeze(contiguous=True), False),
                "phase 1 (training)": (phase1, True),
            }
            print("choice shares, layer 1:", {k: round(v, 2) for k, v in phase1.choice_shares()[0].items()})
            """
        ),
        code(
            r"""
            def step(net, train):
                logits = net.forward(x, train=train)                  # forward
                _, dlogits = softmax_cross_entropy(logits, labels, check=False)
                net.backward(dlogits)                                 # backward

            for net, train in nets.values():                          # warm-up
                step(net, train)
            times = {name: [] for name in nets}
            for _ in range(ROUNDS):
                for name, (net, train) in nets.items():
                    started = time.perf_counter()
                    step(net, train)
                    times[name].append(time.perf_counter() - started)
            ms = {name: 1e3 * np.array(t) for name, t in times.items()}
            base = np.median(ms["uniform ReLU"])
            print(f"sizes {SIZES}, batch {BATCH}, median of {ROUNDS} rounds (forward + backward):")
            for name, t in ms.items():
                q1, q3 = np.percentile(t, [25, 75])
                print(f"  {name:<20} {np.median(t):7.2f} ms  {np.median(t) / base:5.2f}x uniform ReLU"
                      f"   (middle half {q1:.2f}..{q3:.2f}, best {t.min():.2f})")
            """
        ),
        code(
            r"""
            names = list(ms)
            medians = [np.median(ms[n]) for n in names]
            spread = np.array([[m - np.percentile(ms[n], 25), np.percentile(ms[n], 75) - m] for n, m in zip(names, medians)]).T
            fig, ax = plt.subplots(figsize=(7.5, 3.2))
            ax.barh(names, medians, xerr=spread, color=["0.55", "#d62728", "#2ca02c", "#9467bd"], capsize=4)
            for i, m in enumerate(medians):
                ax.text(m, i, f"  {m:.2f} ms", va="center", fontsize=9)
            ax.invert_yaxis()
            ax.set(xlabel="milliseconds per forward + backward (median; bars: middle half)",
                   title=f"{'-'.join(map(str, SIZES))}, batch {BATCH}", xlim=(0, max(medians) * 1.3))
            plt.show()
            """
        ),
        md(
            r"""
            Phase 1 is the expensive phase: every neuron evaluates all six candidates (and their
            derivatives) at every step. Once frozen, a mixed network pays for each neuron's own
            activation only, and the cost falls back towards the uniform network's: most of a
            step is spent in the matrix products, which are the same for all three.

            How much the two group layouts differ depends on how the library applies a group.
            With Numba installed (the `fast` extra), `FixedMixedActivation` runs all the groups of
            a layer in one compiled forward pass and one compiled backward pass
            (`smartmixed_np/compiled.py`), which read each neuron's row of the feature-major
            buffers wherever it lies: then a masked layer needs no gather or scatter, and the
            two layouts cost about the same. Without Numba it runs a few NumPy calls per group,
            and a masked layer pays for one permutation of its rows each way. The line below
            says which this notebook ran with.

            To see the cost of gathering and scattering itself, here is one activation layer
            alone (512 neurons, batch 128), through the plain reference functions
            `fixed_forward`/`fixed_backward`, next to a Python loop over neurons and a single
            uniform ReLU group:
            """
        ),
        code(
            r"""
            from smartmixed_np import compiled
            print("compiled loops:", compiled.status())

            WIDTH = 128 if QUICK else 512
            z = rng.standard_normal((BATCH, WIDTH)).astype(np.float32)
            da = rng.standard_normal((BATCH, WIDTH)).astype(np.float32)
            layer_choices = rng.integers(0, len(pool), WIDTH)
            perm = contiguous_order(layer_choices)
            z_sorted = np.ascontiguousarray(z[:, perm])
            layouts = {
                "uniform ReLU (1 group)": (z, make_groups(np.zeros(WIDTH, dtype=np.int64), pool, cpu, contiguous=True, clamp=None)),
                "masked groups": (z, make_groups(layer_choices, pool, cpu, contiguous=False, clamp=10.0)),
                "contiguous groups": (z_sorted, make_groups(layer_choices[perm], pool, cpu, contiguous=True, clamp=10.0)),
            }

            def per_neuron_loop(z):
                a = np.empty_like(z)
                for n, c in enumerate(layer_choices):                 # one activation call per neuron
                    a[:, n] = np.clip(pool[c].forward(z[:, n]), -10, 10)
                return a
            """
        ),
        code(
            r"""
            layer_times = {name: [] for name in [*layouts, "loop over neurons (forward only)"]}
            for _ in range(max(5, ROUNDS // 2)):
                for name, (zz, groups) in layouts.items():
                    started = time.perf_counter()
                    a, cache = fixed_forward(zz, groups)               # forward
                    fixed_backward(da, cache, groups)                  # backward
                    layer_times[name].append(time.perf_counter() - started)
                started = time.perf_counter()
                per_neuron_loop(z)
                layer_times["loop over neurons (forward only)"].append(time.perf_counter() - started)
            contiguous_ms = 1e3 * np.median(layer_times["contiguous groups"])
            print(f"one activation layer, {WIDTH} neurons, batch {BATCH}: median time per forward + backward")
            for name, t in layer_times.items():
                print(f"  {name:<34} {1e3 * np.median(t):8.3f} ms  {1e3 * np.median(t) / contiguous_ms:6.2f}x contiguous")
            """
        ),
        md(
            r"""
            Reading the layer timings:

            * the **loop over neurons** makes one small call per neuron (hundreds per layer)
              instead of at most six large ones; even without its backward pass it is the
              slowest, and it gets worse with width;
            * **masked vs contiguous**: the masked layout pays for a gather (`z[:, idx]` copies)
              and a scatter (`a[:, idx] = ...`) per group, in the forward and again in the
              backward pass; the contiguous layout works on slices. The permutation that makes
              slices possible is paid once, at freezing time;
            * the **uniform ReLU** layer is cheaper still, but not because of its layout: ReLU
              is the cheapest candidate and needs no clamp, while a mixed layer also evaluates
              exponentials (sigmoid, ELU, SELU) and tanh on its other groups.

            Timings depend on the machine: these come from the one that executed this notebook
            (a small 2-core CPU for the saved outputs). Other work on the machine shows up as a
            wide middle half; the best time is then the better guide to the intrinsic cost. To
            measure on yours, re-run the cells, or use `smartmixed bench`.
            """
        ),
    ]


# =====================================================================================
# 06: the same code on the GPU
# =====================================================================================
def notebook_06() -> list:
    return [
        md(
            rf"""
            # 6. The same code on the GPU (CuPy)

            Every numerical function in `smartmixed_np` asks its input arrays which *array
            module* they belong to (`numpy` on the CPU, `cupy` on the GPU) and calls that module.
            So the GPU needs no second implementation: put the data and the model on the GPU
            and the same code runs there.

            You will

            * ask for the GPU backend, and fall back to the CPU **clearly** when there is no
              GPU or no CuPy;
            * see `array_module`, and the two conversions at the edges: host to device
              (`backend.asarray`) and device to host (`to_host`);
            * train a small SmartMixed network on whichever device you got.

            {MODE_NOTE} *The saved outputs were produced on a machine without a GPU, so they
            show the CPU fallback; on a machine with CUDA and CuPy
            (`pip install -e ".[gpu]"`) the same cells run on the GPU.*
            """
        ),
        code(
            r"""
            import os
            import time

            import numpy as np

            from smartmixed_np import MLP, Adam, clip_grad_norm, get_activation, softmax_cross_entropy, to_host
            from smartmixed_np.backend import BackendUnavailableError, array_module, get_backend
            from smartmixed_np.data import load_dataset

            QUICK_SETUP
            """
        ),
        md(
            r"""
            ## Choosing the device

            `get_backend("gpu")` imports CuPy and looks for a CUDA device. If either is missing it
            raises `BackendUnavailableError` with the reason; we catch it and continue on the CPU.
            """
        ),
        code(
            r"""
            try:
                backend = get_backend("gpu")
                print(f"GPU backend available: {backend}")
            except BackendUnavailableError as err:
                print("No GPU backend on this machine:")
                print("   ", err)
                print("-> running on the CPU instead. Everything below is the same code either way.")
                backend = get_backend("cpu")
            print(f"device: {backend.device}, array module: {backend.xp.__name__}")
            """
        ),
        md(
            r"""
            ## Arrays know their module

            Data is loaded on the host (NumPy) and moved to the device **once**, at the edge, by
            `backend.asarray`. From then on, every function finds the right module through
            `array_module(x)`, the same way `cupy.get_array_module` does. On the CPU `asarray`
            returns the array itself; on the GPU it copies it into device memory.
            """
        ),
        code(
            r"""
            x_host = np.linspace(-2, 2, 5)
            x_dev = backend.asarray(x_host)                    # host -> device (the edge)
            print("host array:  ", type(x_host).__module__, type(x_host).__name__)
            print("device array:", type(x_dev).__module__, type(x_dev).__name__)
            print("array_module(x_dev) is", array_module(x_dev).__name__)

            y_dev = get_activation("elu").forward(x_dev)        # runs wherever x_dev lives
            print("elu on the device returns a", type(y_dev).__module__, "array")
            print("back on the host, for printing:", to_host(y_dev))   # device -> host (the edge)
            """
        ),
        md(
            r"""
            CuPy refuses to mix host and device arrays in arithmetic, and refuses to convert a
            device array to NumPy implicitly; both raise `TypeError`. That strictness is useful:
            it turns a silent, slow host-device round trip into an error. The model checks its
            input for the same reason:
            """
        ),
        code(
            r"""
            probe = MLP([5, 4, 2], "smartmixed", device=backend, seed=0)
            if backend.device == "gpu":
                try:
                    probe.forward(np.ones((3, 5), dtype=np.float32))      # a host array into a GPU model
                except TypeError as err:
                    print("TypeError:", err)
            else:
                print("(on the CPU, host and device memory are the same: there is nothing to mix up)")
            """
        ),
        md(
            r"""
            ## The same model, on either device

            Initial weights and Gumbel noise are drawn on the host from seeded generators and then
            moved to the device, so the same seed gives the same network on the CPU and the GPU:
            """
        ),
        code(
            r"""
            sizes = [784, 64, 32, 10] if QUICK else [784, 256, 128, 10]
            model = MLP(sizes, "smartmixed", device=backend, seed=0)
            reference = MLP(sizes, "smartmixed", device="cpu", seed=0)
            same = all(np.array_equal(to_host(p), reference.parameters()[name]) for name, p in model.parameters().items())
            print(f"model on {backend.device}: {model.num_parameters():,} parameters; same initial values as on the CPU: {same}")
            """
        ),
        md(
            r"""
            ## A short training run on the chosen device

            The data moves to the device once; batches are gathered there. Inside the loop nothing
            goes back to the host: the loss is accumulated as a device scalar and read with
            `to_host` once per epoch. `backend.synchronize()` waits for queued GPU work, so the
            timings are honest (on the CPU it does nothing).
            """
        ),
        code(
            r"""
            data = load_dataset("synth-digits", n_train=1000 if QUICK else 8000, n_val=200 if QUICK else 1000, n_test=200)
            x_train = backend.asarray(data.x_train)            # host -> device, once
            y_train = backend.asarray(data.y_train)
            x_val, y_val = backend.asarray(data.x_val), backend.asarray(data.y_val)
            xp = backend.xp
            optimizer = Adam(model.parameters(), lr=1e-3)
            shuffle = np.random.default_rng(0)
            BATCH, EPOCHS = 128, (2 if QUICK else 5)

            for epoch in range(1, EPOCHS + 1):
                backend.synchronize()
                started = time.perf_counter()
                order = backend.asarray(shuffle.permutation(len(data.y_train)))
                loss_sum = xp.zeros((), dtype=np.float64)
                for start in range(0, len(data.y_train), BATCH):
                    idx = order[start:start + BATCH]
                    logits = model.forward(x_train[idx], train=True)                # forward
                    loss, dlogits = softmax_cross_entropy(logits, y_train[idx], check=False)
                    model.backward(dlogits)                                        # backward
                    clip_grad_norm(model.gradients(), 1.0)                          # update
                    optimizer.step(model.gradients())
                    loss_sum += loss * int(idx.shape[0])
                backend.synchronize()
                seconds = time.perf_counter() - started
                val_acc = float(to_host(xp.mean(model.predict(x_val) == y_val)))    # device -> host: one number
                print(f"epoch {epoch} on {backend.device}: train loss {float(to_host(loss_sum)) / len(data.y_train):.4f}, "
                      f"validation accuracy {val_acc:.3f}, {seconds:.2f} s")
            """
        ),
        md(
            r"""
            The whole training run, freezing included, goes through the same switch:
            `MLP(..., device="gpu")` in code, `TrainConfig(device="gpu")` for `train()`, and
            `smartmixed train --device gpu` on the command line. On NumPy a run is reproducible
            bit for bit; on the GPU the matrix products may add in a different order, so
            results agree with the CPU to rounding, not to the last bit.
            """
        ),
        code(
            r"""
            frozen = model.freeze()                             # phase 2 lives on the same device
            print("frozen model on", frozen.backend.device, "| shares, layer 1:",
                  {k: round(v, 2) for k, v in frozen.choice_shares()[0].items()})
            """
        ),
    ]


# =====================================================================================
# 07: reproducing the MNIST experiment
# =====================================================================================
def notebook_07() -> list:
    return [
        md(
            rf"""
            # 7. Reproducing the MNIST experiment

            The paper trains SmartMixed on MNIST with architecture 2 (784-512-256-128-10), Adam at
            learning rate $10^{{-4}}$, batch 128, gradient norm clipped to 1, 400 epochs of which the
            first 50 are phase 1, $\tau = 0.3$, and compares with a ReLU network.

            This notebook runs that comparison: SmartMixed against a ReLU baseline with the same
            seed, data split and optimiser, then the learning curves and the activations each
            layer preferred. It has three settings:

            * **quick** (`SMARTMIXED_QUICK=1`, the test suite): a few thousand images, tiny
              network, three epochs;
            * **default**: the full training data and architecture 2, but a short schedule
              (learning rate $10^{{-3}}$, 15 epochs, phase 2 from epoch 6), a few minutes on a
              laptop CPU;
            * **published** (`FULL_PUBLISHED = True` below): the paper's settings. 400 epochs take
              hours on a GPU and days on a CPU.

            Data: MNIST is read from `DATA_DIR` (set it below) or from the folder named by the
            environment variable `SMARTMIXED_DATA` (a parent folder holding `mnist/`), else
            downloaded once into the cache (checksums verified). If none of that works, the
            notebook says so and falls back to `synth-digits`, so that it still runs.

            {MODE_NOTE}
            """
        ),
        code(
            r"""
            import os
            import tempfile
            from pathlib import Path

            import matplotlib.pyplot as plt
            import numpy as np
            from IPython.display import Image, display

            from smartmixed_np.data import load_dataset
            from smartmixed_np.errors import DataError
            from smartmixed_np.plots import model_color
            from smartmixed_np.train import TrainConfig, train

            QUICK_SETUP

            # A folder holding the four MNIST IDX files, or a parent folder holding mnist/.
            # None: use $SMARTMIXED_DATA, then the download cache.
            DATA_DIR = None
            ALLOW_DOWNLOAD = not QUICK      # the test suite runs offline: quick mode never downloads
            FULL_PUBLISHED = False          # True: the paper's schedule (hours on a GPU, days on a CPU)
            DEVICE = "cpu"                  # "gpu" with CuPy installed (see notebook 6)
            """
        ),
        md(
            r"""
            ## The data

            The paper's protocol: pixels scaled to $[0, 1]$ and flattened; the official training
            set split 90/10 into training and validation sets (stratified, fixed seed); the
            official test set for testing.
            """
        ),
        code(
            r"""
            try:
                data = load_dataset("mnist", DATA_DIR, download=ALLOW_DOWNLOAD, train_limit=2000 if QUICK else None)
                DATASET = "mnist"
            except DataError as err:
                print("MNIST is not available here:", err)
                print("-> falling back to synth-digits (generated 28x28 glyphs), so that the notebook still runs.")
                DATASET = "synth-digits"
                data = load_dataset(DATASET, train_limit=2000 if QUICK else None)
            # data.source holds the full path of the folder read; its name is enough to show here
            source = "generated" if data.source == "synthetic" else f"read from a folder named {Path(data.source).name}/"
            print(f"{data.name}: {data.input_dim} inputs, {data.num_classes} classes, {source}")
            print(f"training {len(data.y_train):,}, validation {len(data.y_val):,}, test {len(data.y_test):,} images")
            """
        ),
        md(
            r"""
            Check the sizes printed above: the official MNIST training set has 60,000 images
            (54,000 + 6,000 after the split) and the test set 10,000. A local copy may hold fewer
            training images; say which data a result was measured on when you report it.
            """
        ),
        code(
            r"""
            fig, axes = plt.subplots(2, 10, figsize=(10, 2.3))
            for ax, image, label in zip(axes.ravel(), data.x_train, data.y_train):
                ax.imshow(image.reshape(28, 28), cmap="gray_r")
                ax.set_title(str(label), fontsize=8)
                ax.axis("off")
            plt.show()
            """
        ),
        md(
            r"""
            ## The settings
            """
        ),
        code(
            r"""
            if FULL_PUBLISHED:
                # the published settings: lr 1e-4, 400 epochs, phase 2 after epoch 50, architecture 2
                settings = dict(hidden=(512, 256, 128), lr=1e-4, epochs=400, transition_epoch=50, train_limit=None)
            elif QUICK:
                settings = dict(hidden=(128, 64), lr=1e-3, epochs=3, transition_epoch=1, train_limit=2000)
            else:
                # architecture 2 on all the data, a short schedule with a larger learning rate
                settings = dict(hidden=(512, 256, 128), lr=1e-3, epochs=15, transition_epoch=5, train_limit=None)
            # train() reads the very folder loaded above (made absolute: the working directory changes below)
            data_dir = os.path.abspath(data.source) if DATASET == "mnist" else None
            common = dict(dataset=DATASET, data_dir=data_dir, batch_size=128,
                          clip=1.0, tau=0.3, seed=0, device=DEVICE, progress=False, **settings)
            workdir = tempfile.mkdtemp(prefix="smartmixed-mnist-")    # run folders go here...
            os.chdir(workdir)                                          # ...and are named relative to it
            print(settings)
            """
        ),
        md(
            r"""
            ## SmartMixed

            Phase 1 for `transition_epoch` epochs, then the best phase-1 weights (by validation
            loss) are frozen and trained on as a fixed mixed network. One line per epoch; phase-1
            lines end with the activation most chosen in each layer.
            """
        ),
        code(
            r"""
            smart = train(TrainConfig(model="smartmixed", out="smartmixed", **common))
            """
        ),
        md(
            r"""
            ## The ReLU baseline

            The same network with ReLU everywhere, the same seed, split and optimiser, trained for
            the same number of epochs in one phase.
            """
        ),
        code(
            r"""
            relu = train(TrainConfig(model="relu", out="relu", **common))
            """
        ),
        md(
            r"""
            ## Results
            """
        ),
        code(
            r"""
            for label, run in (("SmartMixed", smart), ("ReLU", relu)):
                m = run.metrics
                print(f"{label:<11} test accuracy {m['test']['accuracy']:.4f}  (loss {m['test']['loss']:.4f}; "
                      f"model of epoch {m['selected']['epoch']})")
            p1 = smart.metrics["phase1"]
            print(f"SmartMixed after phase 1 only (epoch {p1['epoch']}): test accuracy {p1['test_accuracy']:.4f}")
            """
        ),
        code(
            r"""
            fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.8))
            for label, run in (("SmartMixed", smart), ("ReLU", relu)):
                color = model_color(label)                             # the same colours as every figure of the library
                epochs = [row["epoch"] for row in run.history]
                ax_loss.plot(epochs, [row["val_loss"] for row in run.history], "o-", ms=3, color=color, label=f"{label}, validation")
                ax_loss.plot(epochs, [row["train_loss"] for row in run.history], ":", color=color, label=f"{label}, training")
                ax_acc.plot(epochs, [row["val_acc"] for row in run.history], "o-", ms=3, color=color, label=label)
            for ax in (ax_loss, ax_acc):
                ax.axvline(settings["transition_epoch"] + 0.5, color="0.4", ls="--", lw=1)
                ax.set_xlabel("epoch (dashed: SmartMixed enters phase 2)")
                ax.grid(alpha=0.3)
            ax_loss.set(ylabel="cross-entropy", title="loss", yscale="log")
            ax_acc.set(ylabel="validation accuracy", title=f"validation accuracy ({DATASET}, {len(data.y_train):,} training images)")
            ax_loss.legend(fontsize=8)
            ax_acc.legend(fontsize=8, loc="lower right")
            plt.tight_layout()
            plt.show()
            """
        ),
        md(
            r"""
            ## Layer preferences

            Which activation each hidden layer's neurons chose, as the share of each candidate
            (from the frozen model), how the shares moved during phase 1, and every neuron's
            choice as a coloured cell. These are the figures `train()` writes into the run folder.
            """
        ),
        code(
            r"""
            for layer, shares in enumerate(smart.metrics["choice_shares"]):
                ranked = sorted(shares.items(), key=lambda kv: -kv[1])
                print(f"layer {layer + 1}:", ", ".join(f"{name} {share:.0%}" for name, share in ranked))
            figures = smart.run_dir / "figures"
            display(Image(filename=str(figures / "activation_shares.png"), width=640))
            """
        ),
        code(
            r"""
            display(Image(filename=str(figures / "share_evolution.png"), width=760))
            display(Image(filename=str(figures / "choice_map.png"), width=640))
            """
        ),
        md(
            r"""
            **Reading the results.** The default schedule is short and its learning rate ten
            times the published one, so the validation loss bottoms out within a few epochs and
            then creeps up (the model kept is the one with the lowest validation loss). It is
            also one seed on one split: treat differences of a few tenths of a percent as
            noise. The published comparison needs the full schedule (`FULL_PUBLISHED = True`)
            and several seeds. The run folders under
            `workdir` (the working directory since the settings cell) hold everything (`history.csv`, `metrics.json`, `choices.csv`, the model);
            `smartmixed evaluate <run folder>` re-scores a saved model.
            """
        ),
    ]

NOTEBOOKS = {
    "01_activations": notebook_01,
    "02_backprop_by_hand": notebook_02,
    "03_gumbel_straight_through": notebook_03,
    "04_smartmixed_end_to_end": notebook_04,
    "05_phase2_fast": notebook_05,
    "06_gpu_cupy": notebook_06,
    "07_reproduce_mnist": notebook_07,
}


# =====================================================================================
# building and executing
# =====================================================================================
def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name`` (a key of :data:`NOTEBOOKS`), without outputs."""
    nb = nbformat.v4.new_notebook()
    nb.cells = NOTEBOOKS[name]()
    for index, cell in enumerate(nb.cells):
        cell.id = f"{name[:2]}-{index:02d}"  # stable ids: a rebuild changes only what changed
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def execute(nb: nbformat.NotebookNode, quick: bool, timeout: int = 900) -> nbformat.NotebookNode:
    """Run ``nb`` top to bottom in a fresh ``python3`` kernel (inline figures)."""
    from nbclient import NotebookClient

    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # let ipykernel pick its inline backend, so figures are captured
    if quick:
        env["SMARTMIXED_QUICK"] = "1"
    else:
        env.pop("SMARTMIXED_QUICK", None)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", record_timing=False,
        resources={"metadata": {"path": str(HERE)}},
    )
    with tempfile.TemporaryDirectory() as scratch:  # the run folders the notebooks write go here
        env["TMPDIR"] = scratch
        client.execute(env=env)
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("only", nargs="*", help="build only notebooks whose names start with these (e.g. 03)")
    parser.add_argument("--execute", action="store_true", help="run each notebook and save it with its outputs")
    parser.add_argument("--quick", action="store_true", help="execute in quick mode (SMARTMIXED_QUICK=1)")
    args = parser.parse_args(argv)
    names = [n for n in NOTEBOOKS if not args.only or any(n.startswith(p) for p in args.only)]
    if not names:
        parser.error(f"no notebook matches {args.only}; known: {', '.join(NOTEBOOKS)}")
    for name in names:
        nb = build(name)
        if args.execute:
            started = time.perf_counter()
            execute(nb, quick=args.quick)
            print(f"{name}: executed in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        path = HERE / f"{name}.ipynb"
        nbformat.validate(nb)
        nbformat.write(nb, str(path))
        print(f"wrote {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
