"""engine/runner.py's ``_Pace``: the render loop stays one denoising step ahead of the GPU and
waits for the step before with the interpreter lock released, so the PNG writer and the page
composer run while the GPU works. CUDA's events are stood in for here (no GPU in CI); the GPU
run is bench/e2e.py's."""

from __future__ import annotations

import torch

from storyboard.engine import runner


class Mark:
    made: list = []

    def __init__(self):
        self.recorded = self.waited = False
        Mark.made.append(self)

    def record(self, stream=None):
        self.recorded = True

    def synchronize(self):
        assert self.recorded
        self.waited = True


def test_each_step_waits_for_the_one_before_never_its_own(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "Event", Mark)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: None)
    Mark.made = []
    pace = runner._Pace("cuda")
    assert pace.on
    pace.step()
    assert [m.waited for m in Mark.made] == [False]  # the first step: nothing to wait for
    pace.step()
    pace.step()
    assert [m.waited for m in Mark.made] == [True, True, False]  # one step stays queued


def test_off_cuda_it_does_nothing(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Event", lambda: (_ for _ in ()).throw(AssertionError))
    pace = runner._Pace("cpu")
    assert not pace.on
    pace.step()
