"""Progress for people (a bar over panels), silence for scripts, JSON lines for tools.

In: the progress events a command emits (``{"event": "panel", ...}``; the stream `--json`
prints is pinned by tests/golden/events/). Out: a tqdm bar and notices on stderr, nothing with
`--quiet`, or one JSON object per line on stdout with `--json`.
"""

from __future__ import annotations

import json
import sys

import click


class Progress:
    def __init__(self, quiet: bool, as_json: bool):
        self.quiet = quiet
        self.as_json = as_json
        self.bar = None
        self.panels_done = 0  # panels announced (their files written), for an interrupt

    def __call__(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "panel" and event.get("status") == "rendered":
            self.panels_done += 1
        if self.as_json:
            click.echo(json.dumps(event, ensure_ascii=False))
            return
        if self.quiet:
            return
        if kind in ("warning", "waiting", "train_first"):
            click.echo(event["message"], err=True)
        elif kind == "plan" and event["to_render"]:
            from tqdm import tqdm

            self.close()  # a training's bar, if the build trained first
            self.bar = tqdm(total=len(event["to_render"]), unit="panel", desc="rendering",
                            leave=False)
        elif kind == "panel" and self.bar is not None:
            # Failures are listed with the summary, after the bar is gone.
            self.bar.update(1)
            self.bar.set_postfix_str(event.get("panel", ""))
        elif kind == "speedups" and "torch.compile" in event["applied"]:
            from tqdm import tqdm

            # Through tqdm, so the bar is redrawn below the line instead of through it.
            tqdm.write("compiling the UNet (seconds where this machine compiled the batch "
                       "shape before, minutes the first time; --no-compile renders without)",
                       file=sys.stderr)
        elif kind == "class_pictures":
            from tqdm import tqdm

            self.close()
            self.bar = tqdm(total=event["to_render"], unit="picture", leave=False,
                            desc=f"class pictures of {event['character']}")
        elif kind == "train_sheet":
            from tqdm import tqdm

            # Through tqdm, so the bar is redrawn below the line instead of through it.
            tqdm.write(f"step {event['step']}: {event['path']}")
        elif kind == "train_start":
            from tqdm import tqdm

            self.close()
            self.bar = tqdm(total=event["steps"], unit="step", leave=False,
                            desc=f"training {event['character']}")
        elif kind == "train_phase" and self.bar is not None:
            if event["phase"] == "training":  # the clock starts now: loading is not a step
                self.bar.reset(total=event["steps"])
                self.bar.update(event.get("resumed_from") or 0)
                self.bar.set_description(self.bar.desc.split(" (")[0])
            else:
                self.bar.set_description(f"{self.bar.desc.split(' (')[0]} ({event['phase']})")
        elif kind == "train_step" and self.bar is not None:
            self.bar.update(event["step"] - self.bar.n)  # a resumed run starts past 0
            self.bar.set_postfix_str(f"loss {event['loss']:.4f}")
        elif kind == "oom_split":
            click.echo(f"out of GPU memory; retrying {', '.join(event['panels'])} in smaller "
                       "batches", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def finish(self, kind: str, message: str, code: int) -> None:
        """End the stream of a command that failed: with `--json`, a last event saying why
        (the message itself goes to stderr as usual)."""
        self.close()
        if self.as_json:
            click.echo(json.dumps({"event": kind, "message": message, "exit_code": code},
                                  ensure_ascii=False))

    def __enter__(self) -> Progress:
        from . import PROGRESS

        context = click.get_current_context(silent=True)
        if context is not None:
            context.meta[PROGRESS] = self
        return self

    def __exit__(self, *exc) -> None:
        self.close()  # stays registered: the command line's failure handler may still need it
