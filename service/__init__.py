"""bnfold's inference service: serves a model repository's folded and unfolded ONNX variants with onnxruntime
over the Open Inference Protocol v2 (REST, binary tensor extension) and a simple /predict endpoint.

Entry points: `service.app.create_app(settings)` (the app factory), `service.settings.Settings`
(BNFOLD_* configuration), `service.cli.serve_main(argv)` (`bnfold serve`). Imports neither torch nor folding.
See docs/service.md.
"""
