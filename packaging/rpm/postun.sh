# %postun ($1: 0 = erase, 1+ = upgrade). RPM has no purge: erase keeps k3snoded's state in
# /var/lib/k3snoded and edited conffiles (as .rpmsave), like `apt-get remove`. Upgrade: no
# try-restart, on purpose.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
	systemctl daemon-reload || :
fi
exit 0
