"""Step callbacks named in a config (`train.step_callbacks=[tests.debug_callbacks.stop_at_first_step]`) by the
test that `breakpoint()` stops a `lma3d train --no-ray` run in its own process, and by the sweep's test of a
trial that errors."""

from jobs.training.callbacks import StepEvent


def stop_at_first_step(event: StepEvent) -> None:
    if event.step == 1:
        breakpoint()  # noqa: T100 - the behaviour under test


def fail_at_first_step(event: StepEvent) -> None:
    """A run that dies of its own code (the sweep's test of an errored trial)."""
    if event.step == 1:
        raise RuntimeError("injected fault at step 1")
