"""Sampler names users type map to one canonical name and a diffusers recipe."""

import pytest

from storyboard.samplers import SAMPLERS, canonical_sampler, sampler_names


@pytest.mark.parametrize("typed, canonical", [
    ("Euler", "Euler"), ("euler a", "Euler a"), ("Euler_A", "Euler a"),
    ("euler_ancestral", "Euler a"), ("DPM++ 2M Karras", "DPM++ 2M Karras"),
    ("dpmpp_2m karras", "DPM++ 2M Karras"), ("dpmpp_2m_sde", "DPM++ 2M SDE"),
    ("DPM++ 2M SDE Karras", "DPM++ 2M SDE Karras"), ("dpmpp_sde", "DPM++ SDE"),
    ("uni_pc", "UniPC"), ("UniPC", "UniPC"), ("ddim", "DDIM"), ("Heun", "Heun"),
    ("LMS", "LMS"), ("default", "Default"),
])
def test_names_users_know(typed, canonical):
    assert canonical_sampler(typed) == canonical


@pytest.mark.parametrize("typed", ["Eular", "DPM++ 3M", "", "karras"])
def test_unknown_names(typed):
    assert canonical_sampler(typed) is None


def test_every_issue_named_sampler_exists():
    required = {"Euler", "Euler a", "Heun", "LMS", "DDIM", "UniPC", "DPM++ 2M",
                "DPM++ 2M Karras", "DPM++ 2M SDE", "DPM++ 2M SDE Karras", "DPM++ SDE", "Default"}
    assert required <= set(sampler_names())
    assert all(r.cls is None or r.cls.endswith("Scheduler") for r in SAMPLERS.values())
