# %posttrans: after the whole transaction (an upgrade has removed the old files by now): the
# bytecode for the interpreters this machine has, from scratch.
if [ -x /opt/k3snoded/bytecode ]; then
	/opt/k3snoded/bytecode clean
	/opt/k3snoded/bytecode compile
fi
exit 0
