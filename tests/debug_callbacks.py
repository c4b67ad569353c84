"""A step callback named in a config (`train.step_callbacks=[tests.debug_callbacks.stop_at_first_step]`) by the
test that `breakpoint()` stops a `lma3d train --no-ray` run in its own process."""

from jobs.training.callbacks import StepEvent


def stop_at_first_step(event: StepEvent) -> None:
    if event.step == 1:
        breakpoint()  # noqa: T100 - the behaviour under test
