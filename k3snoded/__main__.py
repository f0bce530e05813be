from k3snoded.cli import main

raise SystemExit(main())
