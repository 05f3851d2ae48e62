from pkiform.cli import main

raise SystemExit(main())
