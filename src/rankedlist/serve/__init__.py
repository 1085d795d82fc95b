"""``rankedlist serve``: an index and its model behind an HTTP API and a search page.

* :mod:`~rankedlist.serve.upload_images`: uploaded bytes -> RGB images, within the size and
  pixel limits (a bad upload is a 4xx with a one-line reason, never a 500);
* :mod:`~rankedlist.serve.embed_batcher`: concurrent requests' images embedded together, in one
  forward pass per short window;
* :mod:`~rankedlist.serve.index_source`: the index a search reads (an index folder, or a Milvus
  collection several servers share), reloaded when another process (``rankedlist index add``)
  changes it, never half-written;
* :mod:`~rankedlist.serve.search_service`: the model, the index and the batcher: search, embed,
  info, thumbnails by item id;
* :mod:`~rankedlist.serve.http_app`: the FastAPI application (``/search``, ``/embed``,
  ``/health``, ``/info``, ``/items/{id}/thumbnail``, the page at ``/``, OpenAPI at ``/docs``);
  :mod:`~rankedlist.serve.search_page` the page itself;
* :mod:`~rankedlist.serve.server`: the options, checked before anything starts, and uvicorn.

FastAPI, uvicorn and python-multipart are the ``serve`` extra. Only the command line
(:mod:`rankedlist.cli.serve`) imports this package.
"""
