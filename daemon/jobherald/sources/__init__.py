"""Job sources, one module per type; ``registry`` is what the rest of jobherald goes
through. Nothing is imported here: the config reads the sources' tables
(``sections``) without loading the sources themselves.

- ``base``: what a source is (the ``JobSource`` protocol) and shared HTTP/JSON helpers.
- ``registry``: every source type by its config name, and ``make_source``.
- ``sections``: every source type's table in the config file.
- ``huawei_config``: Huawei Cloud sources' tables and credentials (token, IAM password, AK/SK).
- ``huawei_auth``: those credentials at work, and Huawei Cloud's error shape.
- ``huawei``: what Huawei Cloud's job APIs share (credentials, a refused-credentials retry).
- ``roma``: ROMA Connect asset jobs (``type = "roma-connect"``).
- ``huawei_job``: Huawei Cloud's shared job API (``type = "huawei-job"``).
- ``http_json_config``: the http-json table, checked, and its settings.
- ``http_json``: any JSON job API, read with JMESPath (``type = "http-json"``).
"""
