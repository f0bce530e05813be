# %post ($1: 1 = install, 2+ = upgrade). Never enables, starts or restarts k3snoded: restarting
# every machine at once would defeat the election; machines are restarted one at a time.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
	systemctl daemon-reload || :
fi
if [ "$1" -eq 1 ]; then
	echo "k3snoded: installed. Copy /etc/k3snoded/config.yaml.example to /etc/k3snoded/config.yaml (mode 0600), edit it,"
	echo "k3snoded: check it with 'k3snoded check-config', then: systemctl enable --now k3snoded"
elif [ -d /run/systemd/system ] && systemctl is-active --quiet k3snoded.service 2>/dev/null; then
	echo "k3snoded: upgraded; the running daemon was NOT restarted."
	echo "k3snoded: restart one machine at a time when its peers are healthy: systemctl restart k3snoded"
fi
exit 0
