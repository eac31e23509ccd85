"""Translation hooks (oslo.i18n), as every OpenStack project has them."""

import oslo_i18n

_translators = oslo_i18n.TranslatorFactory(domain='networking_dragonflow_ebpf')

_ = _translators.primary
