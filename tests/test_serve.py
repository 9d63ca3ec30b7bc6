"""`imgsim serve`'s set-up, without a server: checked parameters, injection, the Voilà configuration."""

import os
import socket

import pytest

from conftest import REPO
from imgsim import serve
from imgsim.errors import ConfigError

REPORT = os.path.join(REPO, "reports", "shared_data_imagenet", "metrics.json")


def test_parameters_are_checked_and_made_absolute(tmp_path):
    model = tmp_path / "m.keras"
    model.write_bytes(b"x")
    params = serve.notebook_parameters(str(model), str(tmp_path), REPORT, 96, "s.csv", 3)
    assert params == {"model_path": str(model), "data_root": str(tmp_path), "report": REPORT,
                      "image_size": 96, "session_file": os.path.abspath("s.csv"), "max_upload_mb": 3.0}
    for kwargs, message in (({"model": "no.keras"}, "--model: no.keras: no such file"),
                            ({"data": "nowhere"}, "--data: nowhere: no such folder"),
                            ({"report": "none.json"}, "none.json: no such report"),
                            ({"report": os.path.join(REPO, "reports", "demo", "metrics.json")},
                             "not an `imgsim evaluate` report"),
                            ({"image_size": 8}, "--image-size: 8 is below 32"),
                            ({"max_upload_mb": 0}, "--max-upload-mb: 0 must be positive")):
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            serve.notebook_parameters(**kwargs)


def test_port_checks():
    for bad in (0, 70000, -1, "8866", True):
        with pytest.raises(ConfigError, match="is not a port number"):
            serve.check_port(bad)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"port {port} on 127.0.0.1 is in use"):
            serve.check_port(port)
    serve.check_port(port)  # free again


def test_each_visit_gets_the_parameters_and_an_xsrf_cookie():
    parameters = serve.notebook_parameters(report=REPORT, session_file="/tmp/h.csv")

    class Handler:  # what the hook needs from tornado's request handler
        touched = False

        @property
        def xsrf_token(self):
            Handler.touched = True  # tornado sets the _xsrf cookie when the token is read
            return b"token"

    hook = serve._prelaunch(serve.DEFAULT_NOTEBOOK, parameters)
    notebook = hook(Handler(), notebook=None, cwd=None)
    assert Handler.touched
    injected = [c for c in notebook.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1
    namespace = {}
    exec(injected[0].source, namespace)  # the papermill cell: plain assignments
    assert {k: namespace[k] for k in parameters} == parameters
    tags = [c.metadata.get("tags", []) for c in notebook.cells]
    assert tags.index(["injected-parameters"]) == tags.index(["parameters"]) + 1


def test_voila_configuration_frees_kernels_and_fits_uploads():
    parameters = serve.notebook_parameters(max_upload_mb=25)
    c = serve.voila_config(serve.DEFAULT_NOTEBOOK, parameters, port=9999, cull_idle_timeout=120)
    assert c.Voila.port == 9999 and c.Voila.port_retries == 0  # never moves to another port
    assert c.Voila.tornado_settings["websocket_max_message_size"] > 25 * 2**20
    assert c.MappingKernelManager.cull_idle_timeout == 120 and c.MappingKernelManager.cull_connected is False
    assert 1 <= c.MappingKernelManager.cull_interval <= 60
    assert c.VoilaConfiguration.template == "imgsim"
    template = os.path.join(serve.TEMPLATES, "voila", "templates", "imgsim")
    assert os.path.isfile(os.path.join(template, "index.html.j2"))
    assert "data-imgsim-upload-limit" in open(os.path.join(template, "index.html.j2")).read()
