module testbench;
  reg clk = 0, clear = 1, valid = 0;
  reg [15:0] word = 16'h0000;
  wire parity;
  parity_accumulator uut(.clk(clk), .clear(clear), .valid(valid), .word(word), .parity(parity));
  always #5 clk = ~clk;
  initial begin
    #12 clear = 0; valid = 1;
    word = 16'h0001; #10 word = 16'h0003; #10 word = 16'h0100; #10 valid = 0;
    #10 if (parity == 1'b0) $display("===========Your Design Passed==========="); else $display("===========Error===========");
    $finish;
  end
endmodule
