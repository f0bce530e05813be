# %preun ($1: 0 = erase, 1+ = upgrade). On erase: stop and disable (the daemon stops its k3s
# child; containerd shims and pods keep running). On upgrade: nothing.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
	systemctl --no-reload disable --now k3snoded.service >/dev/null 2>&1 || :
fi
# On erase, the bytecode %posttrans compiled (rpm does not own it).
if [ "$1" -eq 0 ] && [ -x /opt/k3snoded/bytecode ]; then
	/opt/k3snoded/bytecode clean
fi
exit 0
