"""Should CNN jobs pack? Grouped convolution (J CNNs as one) against J CNNs one at a time.

Times forward + backward + SGD of J tutorial CNNs (n_features 6, batch 64) per step, both ways, on
one thread. `packed.packable` keeps the CNN unpacked on a device where grouped is not faster.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from service.training.nets import CNN


def grouped_step_seconds(jobs: int, steps: int, device: torch.device) -> float:
    n = 6
    conv1 = torch.randn(jobs * n, 1, 5, 5, device=device, requires_grad=True)
    conv2 = torch.randn(jobs * n, n, 5, 5, device=device, requires_grad=True)
    fc1 = torch.randn(jobs, 16 * n, 50, device=device, requires_grad=True)
    fc2 = torch.randn(jobs, 50, 10, device=device, requires_grad=True)
    optimizer = torch.optim.SGD([conv1, conv2, fc1, fc2], lr=0.01, momentum=0.5)
    x = torch.randn(64, jobs, 28, 28, device=device)  # each job's own batch in its own channel
    y = torch.randint(0, 10, (jobs * 64,), device=device)

    def step() -> None:
        h = F.max_pool2d(F.relu(F.conv2d(x, conv1, groups=jobs)), 2)
        h = F.max_pool2d(F.relu(F.conv2d(h, conv2, groups=jobs)), 2)  # (64, J*n, 4, 4)
        h = h.view(64, jobs, 16 * n).transpose(0, 1)  # (J, 64, 96)
        out = F.log_softmax(torch.bmm(F.relu(torch.bmm(h, fc1)), fc2), dim=-1)
        optimizer.zero_grad()
        F.nll_loss(out.reshape(-1, 10), y, reduction="sum").backward()
        optimizer.step()

    return timed(step, steps, device)


def single_step_seconds(jobs: int, steps: int, device: torch.device) -> float:
    models = [CNN(784, 6, 10).to(device) for _ in range(jobs)]
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.5) for m in models]
    x = torch.randn(64, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (64,), device=device)

    def step() -> None:
        for model, optimizer in zip(models, optimizers, strict=True):
            optimizer.zero_grad()
            F.nll_loss(model(x), y).backward()
            optimizer.step()

    return timed(step, steps, device)


def timed(step, steps: int, device: torch.device) -> float:
    for _ in range(5):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--jobs", default="1,4,16")
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    print("| CNN jobs | one at a time ms/step | grouped ms/step | grouped/one-at-a-time |\n|---|---|---|---|")
    for jobs in (int(j) for j in args.jobs.split(",")):
        single = single_step_seconds(jobs, args.steps, device)
        grouped = grouped_step_seconds(jobs, args.steps, device)
        print(f"| {jobs} | {single * 1000:.1f} | {grouped * 1000:.1f} | {grouped / single:.2f} |", flush=True)


if __name__ == "__main__":
    main()
