from jail_http.server import main

main()
