"""Triton shim for `svlm_preprocess`; the logic is python_backends.serving.svlm_steps.PreprocessStep."""

from python_backends.serving.svlm_steps import PreprocessStep


class TritonPythonModel:
    def initialize(self, args):
        self.step = PreprocessStep(args)

    def execute(self, requests):
        return self.step.execute(requests)
