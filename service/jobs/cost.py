"""What a job would cost, estimated from its spec alone, and the per-job budget checked at submit.

The estimate is arithmetic on the spec (no torch), the same for every data set and device:

- steps = epochs * ceil(60000 / batch_size): the optimizer steps of the full training set;
- FLOPs = (6 * MACs * 60000 + 2 * MACs * 10000) * epochs, where MACs are one image's forward
  multiply-adds (a training sample costs its forward and about twice that backward; a test image
  its forward only). FC: 784*h + h*h + h*10. CNN: conv1 24*24 outputs of 5x5 kernels, conv2 8*8
  outputs of 5x5xn kernels, then 16n*50 and 50*10; ReLU and pooling are a few ops per element and
  not counted;
- peak memory = 3 * params * 4 bytes (weights, gradients, momentum) + 2 * (every layer's outputs
  for max(batch_size, test_batch_size) images) * 4 bytes (kept for backward, and their gradients)
  + the data set on the device (70,000 images * 784 float32).

It is an estimate of work, not of time: a batch-1 job is bound by memory traffic and per-step
overhead, not FLOPs, so it runs slower than its FLOPs suggest.
"""

from __future__ import annotations

from service.jobs.schemas import INPUT_SIZE, N_CLASSES, AnySpec, FCSpec, JobCost
from service.platform.errors import InvalidInput

TRAIN_SAMPLES = 60_000  # MNIST's and Fashion-MNIST's training set
TEST_SAMPLES = 10_000
FLOAT_BYTES = 4
DATA_BYTES = (TRAIN_SAMPLES + TEST_SAMPLES) * INPUT_SIZE * FLOAT_BYTES  # the data set, float32, on the device
CPU_CORE_FLOPS_PER_SECOND = 5e10  # for the "about N h on one CPU core" in a refusal; a rough figure
CNN_HIDDEN = 50  # CNN's fc1 width


def forward_macs(spec: AnySpec) -> int:
    """Multiply-adds of one image's forward pass."""
    if isinstance(spec, FCSpec):
        h = spec.n_hidden
        return INPUT_SIZE * h + h * h + h * N_CLASSES
    n = spec.n_features
    conv1 = 24 * 24 * n * 5 * 5  # 1 input channel
    conv2 = 8 * 8 * n * 5 * 5 * n
    return conv1 + conv2 + 16 * n * CNN_HIDDEN + CNN_HIDDEN * N_CLASSES


def activations_per_image(spec: AnySpec) -> int:
    """float32 values every layer outputs for one image, the input included."""
    if isinstance(spec, FCSpec):
        h = spec.n_hidden
        return INPUT_SIZE + 4 * h + 2 * N_CLASSES  # linear, relu, linear, relu, linear, log_softmax
    n = spec.n_features
    convs = 2 * 24 * 24 * n + 12 * 12 * n + 2 * 8 * 8 * n + 4 * 4 * n  # conv, relu, pool (twice)
    return INPUT_SIZE + convs + 2 * CNN_HIDDEN + 2 * N_CLASSES


def estimate(spec: AnySpec) -> JobCost:
    """The job's parameter count, steps, FLOPs and peak memory (see the module's docstring)."""
    macs = forward_macs(spec)
    flops = (6 * macs * TRAIN_SAMPLES + 2 * macs * TEST_SAMPLES) * spec.epochs
    batch = max(spec.batch_size, spec.test_batch_size)
    memory = 3 * spec.param_count * FLOAT_BYTES + 2 * activations_per_image(spec) * batch * FLOAT_BYTES + DATA_BYTES
    return JobCost(
        param_count=spec.param_count,
        steps=spec.epochs * -(-TRAIN_SAMPLES // spec.batch_size),
        flops=float(flops),
        peak_memory_bytes=memory,
    )


def _bytes(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _sci(x: float) -> str:
    return f"{x:.1e}".replace("e+", "e")


def _hours(flops: float) -> str:
    seconds = flops / CPU_CORE_FLOPS_PER_SECOND
    return f"{seconds / 3600:.0f} h" if seconds >= 3600 else f"{max(1, round(seconds / 60))} min"


def over_budget(spec: AnySpec, max_flops: float | None, max_memory_bytes: int | None) -> str | None:
    """Why the job is over the budget (a sentence per limit it breaks), or None when it fits."""
    cost, reasons = estimate(spec), []
    size = "n_hidden" if isinstance(spec, FCSpec) else "n_features"
    if max_flops is not None and cost.flops > max_flops:
        reasons.append(
            f"this job would cost about {_sci(cost.flops)} FLOPs (about {_hours(cost.flops)} on one CPU core at "
            f"{_sci(CPU_CORE_FLOPS_PER_SECOND)} FLOP/s), over the limit of {_sci(max_flops)} "
            f"(MNIST_JOBS_MAX_JOB_FLOPS); lower epochs or {size}"
        )
    if max_memory_bytes is not None and cost.peak_memory_bytes > max_memory_bytes:
        reasons.append(
            f"this job would need about {_bytes(cost.peak_memory_bytes)} of memory at its peak, over the limit of "
            f"{_bytes(max_memory_bytes)} (MNIST_JOBS_MAX_JOB_MEMORY_BYTES); lower batch_size, test_batch_size or {size}"
        )
    return "; and ".join(reasons) or None


def check_budget(spec: AnySpec, max_flops: float | None, max_memory_bytes: int | None) -> None:
    """Raise InvalidInput (422, field "spec") naming the estimate and the limit when over the budget;
    a limit of None is not checked."""
    reason = over_budget(spec, max_flops, max_memory_bytes)
    if reason is not None:
        raise InvalidInput(reason, field="spec")
