"""Triton shim for `svlm_generate`; the logic is python_backends.serving.svlm_steps.GenerateStep."""

from python_backends.serving.svlm_steps import GenerateStep


class TritonPythonModel:
    def initialize(self, args):
        self.step = GenerateStep(args)

    def execute(self, requests):
        return self.step.execute(requests)
