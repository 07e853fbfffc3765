"""The test suite's PostgreSQL and moto fixtures, for the fuzz run (`make fuzz`)."""

from tests.conftest import (  # noqa: F401  (fixtures, found by name)
    make_database,
    moto_endpoint,
    postgres_server_url,
    template_database,
)
