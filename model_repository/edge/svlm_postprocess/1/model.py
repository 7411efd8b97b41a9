"""Triton shim for `svlm_postprocess`; the logic is python_backends.serving.svlm_steps.PostprocessStep."""

from python_backends.serving.svlm_steps import PostprocessStep


class TritonPythonModel:
    def initialize(self, args):
        self.step = PostprocessStep(args)

    def execute(self, requests):
        return self.step.execute(requests)
