"""Triton shim for `svlm_vision`; the logic is python_backends.serving.svlm_steps.VisionStep."""

from python_backends.serving.svlm_steps import VisionStep


class TritonPythonModel:
    def initialize(self, args):
        self.step = VisionStep(args)

    def execute(self, requests):
        return self.step.execute(requests)
