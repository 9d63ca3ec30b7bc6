"""``imgsim serve``: the pair inspector notebook as a web app (Voilà), run in this process.

What Voilà needs for a shared, long-running inspector, set up in one place:

* **Parameters** (``--model``, ``--data``, ``--report``, ...) are injected
  into ``notebooks/04_pair_inspector.ipynb`` the papermill way (a cell after
  the one tagged ``parameters``), in memory, for every page visit.
* **Kernels are freed.** Each visit starts a kernel (1–2 GB with TensorFlow
  and the model). Closing the page posts Voilà's shutdown beacon; Jupyter
  refuses that POST without an ``_xsrf`` cookie, which Voilà's page never
  sets, so the visit's request sets it (:func:`_prelaunch`). A kernel whose
  page vanished without the beacon (a crashed browser, a lost network) is
  culled after ``cull_idle_timeout`` seconds without a connection.
* **Uploads up to the limit arrive**: tornado's websocket message limit
  (10 MiB by default) is raised above the upload limit, and the page
  (template ``imgsim``, :data:`TEMPLATES`) refuses a larger file in the
  browser with the same message the kernel would give.
* **The URL printed is the one Voilà listens on**: the port is checked first
  (a busy or invalid port is an error, never a silent move to the next one)
  and the line is printed once the server is listening.
"""

import errno
import os
import socket

from imgsim.errors import ConfigError, ImgsimError

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "share")
DEFAULT_NOTEBOOK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "notebooks", "04_pair_inspector.ipynb")


def check_port(port, ip="127.0.0.1"):
    """Raise :class:`ConfigError` unless ``port`` is a port number free on ``ip``."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"--port: {port!r} is not a port number (1-65535)")
    with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET) as s:
        try:
            s.bind((ip, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"--port: port {port} on {ip} is in use; choose another "
                                  f"(e.g. --port {port + 1})") from None
            if exc.errno == errno.EACCES:
                raise ConfigError(f"--port: no permission to listen on port {port} "
                                  "(ports below 1024 need root)") from None
            raise ConfigError(f"--ip/--port: cannot listen on {ip}:{port} ({exc.strerror})") from None


def notebook_parameters(model=None, data=None, report="auto", image_size=224, session_file=None,
                        max_upload_mb=25.0):
    """The inspector notebook's parameters, checked: paths made absolute, bad ones named.

    Raises
    ------
    ConfigError
        A missing model, data folder or report, a report that is not an
        evaluation report, or a bad number.
    """
    from imgsim.widgets import load_calibration

    if model is not None and not os.path.isfile(model):
        raise ConfigError(f"--model: {model}: no such file (a .keras model)")
    if data is not None and not os.path.isdir(data):
        raise ConfigError(f"--data: {data}: no such folder")
    if report not in (None, "auto"):
        load_calibration(report)  # names the file and the problem
        report = os.path.abspath(report)
    if image_size < 32:
        raise ConfigError(f"--image-size: {image_size} is below 32 pixels")
    if not max_upload_mb > 0:
        raise ConfigError(f"--max-upload-mb: {max_upload_mb} must be positive")
    absolute = lambda p: None if p is None else os.path.abspath(p)  # noqa: E731
    return {"model_path": absolute(model), "data_root": absolute(data), "report": report,
            "image_size": int(image_size), "session_file": absolute(session_file),
            "max_upload_mb": float(max_upload_mb)}


def _prelaunch(notebook_path, parameters):
    """Voilà's pre-launch hook: set the ``_xsrf`` cookie, inject the parameters."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    def hook(request_handler, notebook, cwd):
        request_handler.xsrf_token  # noqa: B018  (reading it sets the cookie the shutdown beacon sends)
        return parameterize_notebook(load_notebook_node(notebook_path), parameters)

    return hook


def voila_config(notebook, parameters, port=8866, ip="127.0.0.1", cull_idle_timeout=120,
                 open_browser=False):
    """The traitlets configuration of the Voilà app (see the module docstring)."""
    from traitlets.config import Config

    max_bytes = int(parameters["max_upload_mb"] * 2**20)
    c = Config()
    c.Voila.ip, c.Voila.port, c.Voila.port_retries = ip, port, 0
    c.Voila.open_browser = open_browser
    # Room for an upload at the limit, and a margin so the kernel's own check can answer.
    c.Voila.tornado_settings = {"websocket_max_message_size": 2 * max_bytes + 2**24}
    c.VoilaConfiguration.template = "imgsim"
    c.VoilaConfiguration.show_tracebacks = False
    c.VoilaConfiguration.prelaunch_hook = _prelaunch(notebook, parameters)
    c.MappingKernelManager.cull_idle_timeout = int(cull_idle_timeout)
    c.MappingKernelManager.cull_interval = max(1, min(60, int(cull_idle_timeout) // 2))
    c.MappingKernelManager.cull_connected = False  # a page still open keeps its kernel
    return c


def serve(model=None, data=None, report="auto", port=8866, ip="127.0.0.1", image_size=224,
          session_file=None, cull_idle_timeout=120, max_upload_mb=25.0, notebook=None,
          open_browser=False):
    """Serve the pair inspector on ``http://ip:port/``; blocks until stopped (Ctrl-C).

    Parameters
    ----------
    model, data, report, image_size, session_file, max_upload_mb
        The inspector's (:func:`imgsim.widgets.default_inspector`).
    port : int
        Must be free; nothing else is tried.
    cull_idle_timeout : int
        Seconds after which a kernel without a page is shut down.
    notebook : str, optional
        Default: ``notebooks/04_pair_inspector.ipynb``.

    Returns
    -------
    int: 0 once stopped.
    """
    notebook = notebook or DEFAULT_NOTEBOOK
    if not os.path.isfile(notebook):
        raise ConfigError(f"--notebook: {notebook}: no such notebook")
    if cull_idle_timeout < 1:
        raise ConfigError(f"--cull-idle-timeout: {cull_idle_timeout} must be at least 1 second")
    parameters = notebook_parameters(model, data, report, image_size, session_file, max_upload_mb)
    check_port(port, ip)

    import tornado.ioloop
    import voila
    from voila.app import Voila

    # Voilà finds the imgsim template on the Jupyter data path, and the lab template it extends
    # in the data folder pip installed Voilà's files to (<prefix>/share/jupyter), also when this
    # interpreter's prefix is another (a venv layered over another environment).
    voila_data = os.path.abspath(os.path.join(os.path.dirname(voila.__file__), *[os.pardir] * 4,
                                              "share", "jupyter"))
    extra = [TEMPLATES] + ([voila_data] if os.path.isdir(os.path.join(voila_data, "voila")) else [])
    os.environ["JUPYTER_PATH"] = os.pathsep.join(
        extra + [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p])

    app = Voila(config=voila_config(notebook, parameters, port, ip, cull_idle_timeout, open_browser))
    try:
        app.initialize([notebook])
    except (ValueError, OSError) as exc:
        raise ImgsimError(f"voila: {exc}") from None
    described = ", ".join(f"{k}={v}" for k, v in parameters.items() if v is not None)

    def announce():  # runs once the IOLoop is up, i.e. once Voilà listens on app.port
        print(f"imgsim pair inspector: http://{ip}:{app.port}/  ({described}; Ctrl-C stops)",
              flush=True)

    tornado.ioloop.IOLoop.current().add_callback(announce)
    app.start()
    return 0
