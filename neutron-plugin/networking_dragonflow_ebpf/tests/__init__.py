# Neutron's unit-test package selects oslo.service's threading backend when
# it is imported; it must come before anything that imports oslo.service (the
# workers do, through neutron_lib.worker), or that picks eventlet first.
import neutron.tests.unit  # noqa: F401
